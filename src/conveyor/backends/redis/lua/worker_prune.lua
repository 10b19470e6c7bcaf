-- prune_workers: forget workers whose last heartbeat is older than ARGV[1]. Returns the count.
local stale = redis.call('ZRANGEBYSCORE', B .. 'beats', '-inf', '(' .. ARGV[1])
for _, id in ipairs(stale) do
  redis.call('HDEL', B .. 'workers', id)
  redis.call('ZREM', B .. 'beats', id)
end
return #stale
