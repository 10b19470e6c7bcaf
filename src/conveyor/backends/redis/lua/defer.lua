#!lua flags=allow-oom
-- defer: hand a running job back for later (a payload version newer than the worker's),
-- fenced. ARGV: id, fence, delay, now ('' = the server's clock), token (optional; see ack in
-- lib.lua). Scheduled at now + delay (queued when delay <= 0); the attempt is not counted.
local id = ARGV[1]
local k = jkey(id)
local s, f, q, task, prio, attempts, expires = unpack(redis.call('HMGET', k,
  's', 'f', 'q', 't', 'p', 'a', 'ex'))
if s ~= 'running' or (f or '0') ~= ARGV[2] then
  if acked(k, ARGV[5]) == 'deferred' then return 1 end
  return 0
end
ack(k, ARGV[5], 'deferred')
local delay = tonumber(ARGV[3])
local run_at = fmt(clock(ARGV[4]) + math.max(delay, 0))
redis.call('HSET', k, 'a', math.max(tonumber(attempts or '0') - 1, 0), 'ra', run_at)
redis.call('HDEL', k, 'lo', 'lu')
redis.call('ZREM', B .. 'lease', id)
if delay <= 0 then
  move(id, q, task, 'running', 'queued')
  make_ready(id, q, prio or '0', run_at)
else
  move(id, q, task, 'running', 'scheduled')
  schedule(id, q, run_at)
end
if expires then redis.call('ZADD', B .. 'exp', expires, id) end
wake(q)
flush()
return 1
