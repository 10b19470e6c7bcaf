#!lua flags=allow-oom
-- complete: running -> completed, fenced. ARGV: id, fence, has_result (1/0), result, now.
-- Returns 1, or 0 when the lease is not held under that fence.
local id = ARGV[1]
local k = jkey(id)
local s, f, q, task = unpack(redis.call('HMGET', k, 's', 'f', 'q', 't'))
if s ~= 'running' or (f or '0') ~= ARGV[2] then return 0 end
local now = fmt(clock(ARGV[5]))
if ARGV[3] == '1' then redis.call('HSET', k, 'r', ARGV[4]) else redis.call('HDEL', k, 'r') end
redis.call('HSET', k, 'fa', now)
redis.call('HDEL', k, 'lo', 'lu')
redis.call('ZREM', B .. 'lease', id)
move(id, q, task, 'running', 'completed')
finished(id)
return 1
