#!lua flags=allow-oom
-- release: hand a running job back (graceful shutdown), fenced. ARGV: id, fence, token
-- (optional; see ack in lib.lua).
-- Queued again at once with its run-at unchanged; the attempt is not counted.
local id = ARGV[1]
local k = jkey(id)
local s, f, q, task, prio, attempts, run_at, expires = unpack(redis.call('HMGET', k,
  's', 'f', 'q', 't', 'p', 'a', 'ra', 'ex'))
if s ~= 'running' or (f or '0') ~= ARGV[2] then
  if acked(k, ARGV[3]) == 'released' then return 1 end
  -- A repeat of a hand-back that took effect (backends/common.repeated_release).
  if s == 'queued' and (f or '0') == ARGV[2] and tonumber(ARGV[2]) > 0
      and redis.call('HEXISTS', k, 'lo') == 0 then
    return 1
  end
  return 0
end
ack(k, ARGV[3], 'released')
redis.call('HSET', k, 'a', math.max(tonumber(attempts or '0') - 1, 0))
redis.call('HDEL', k, 'lo', 'lu')
redis.call('ZREM', B .. 'lease', id)
move(id, q, task, 'running', 'queued')
make_ready(id, q, prio or '0', run_at)
if expires then redis.call('ZADD', B .. 'exp', expires, id) end
wake(q)
flush()
return 1
