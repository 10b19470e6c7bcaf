-- Throughput counters (the browse capability). ARGV[1] is the operation:
--   add    n (bucket queue task outcome count duration)*n  -> nil
--   prune  before                                          -> buckets removed
-- One hash per minute bucket B..'tp:'<bucket>, fields 'n'/'d' \0 queue \0 task \0 outcome;
-- the ZSET B..'tp' lists the buckets (score = bucket start).
local op = ARGV[1]
if op == 'add' then
  local n = tonumber(ARGV[2])
  for i = 0, n - 1 do
    local a = 3 + i * 6
    local bucket = ARGV[a]
    local field = ARGV[a + 1] .. '\0' .. ARGV[a + 2] .. '\0' .. ARGV[a + 3]
    redis.call('ZADD', B .. 'tp', bucket, bucket)
    redis.call('HINCRBY', B .. 'tp:' .. bucket, 'n\0' .. field, ARGV[a + 4])
    redis.call('HINCRBYFLOAT', B .. 'tp:' .. bucket, 'd\0' .. field, ARGV[a + 5])
  end
  return nil
elseif op == 'prune' then
  local removed = 0
  for _, bucket in ipairs(redis.call('ZRANGE', B .. 'tp', '-inf', '(' .. ARGV[2], 'BYSCORE')) do
    removed = removed + redis.call('HLEN', B .. 'tp:' .. bucket) / 2
    redis.call('DEL', B .. 'tp:' .. bucket)
    redis.call('ZREM', B .. 'tp', bucket)
  end
  return removed
end
