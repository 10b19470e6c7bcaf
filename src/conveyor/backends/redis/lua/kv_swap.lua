-- kv_swap: compare-and-set one key of a namespace's hash (schedules' shared state).
-- ARGV: namespace, key, expected (opt: '' is absent), value (opt: '' deletes).
-- Returns 1 when the stored value equalled `expected` and was replaced, else 0.
local k = B .. 'kv:' .. escape(ARGV[1])
local current = redis.call('HGET', k, ARGV[2])
local expected, value = opt(ARGV[3]), opt(ARGV[4])
if (current or nil) ~= expected then return 0 end
if value == nil then
  redis.call('HDEL', k, ARGV[2])
else
  redis.call('HSET', k, ARGV[2], value)
end
return 1
