#!lua flags=no-writes
--! select.lua
-- list_jobs: matching jobs, newest first (read only). ARGV: offset, limit, budget, filter...
-- Returns id, HGETALL and payload for each job.
local flt = read_filter(4)
local out = {}
for _, id in ipairs(select_ids(flt, true, tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGETALL', jkey(id))
  out[#out + 1] = redis.call('GET', dkey(id))
end
return out
