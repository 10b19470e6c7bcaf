#!lua flags=no-writes
--! select.lua
-- list_summaries: matching jobs, newest first (read only), without their payload, result,
-- progress, logs or error history (a listing must not load a 10 MB argument per row).
-- ARGV: offset, limit, budget, filter... Returns id and the SUMMARY_FIELDS (codec.py), in order.
local FIELDS = {'t', 'q', 's', 'p', 'ra', 'a', 'ma', 'c', 'f', 'lo', 'lu', 'to', 'ex', 'ik',
  'ck', 'e', 'tr', 'md', 'w', 'pa', 'sa', 'fa', 'pv', 'st', 'cr', 'cx', 'dl'}
local flt = read_filter(4)
local out = {}
for _, id in ipairs(select_ids(flt, true, tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HMGET', jkey(id), unpack(FIELDS))
end
return out
