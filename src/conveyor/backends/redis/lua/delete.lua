#!lua flags=allow-oom
--! select.lua
-- delete_jobs: remove matching terminal jobs (oldest id first).
-- ARGV: limit, budget, filter (states already narrowed to terminal ones). Returns their ids.
local flt = read_filter(3)
local ids = select_ids(flt, false, 0, tonumber(ARGV[1]), tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  local k = jkey(id)
  local s, q, task, ikey = unpack(redis.call('HMGET', k, 's', 'q', 't', 'ik'))
  index_remove(id, q, task, s)
  if ikey and redis.call('HGET', B .. 'idem', ikey) == id then
    redis.call('HDEL', B .. 'idem', ikey)
  end
  redis.call('ZREM', B .. 'exp', id)
  redis.call('DEL', k, dkey(id))
end
flush()
return ids
