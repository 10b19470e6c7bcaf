#!lua flags=allow-oom
-- fail: record a failed attempt, fenced; retry now, retry later, or finish in `terminal`.
-- ARGV: id, fence, error_json, retry_delay ('' = no retry), now, terminal, dead_letter_queue,
-- token (optional; see ack in lib.lua).
-- Returns the new state, or false when the lease is not held under that fence.
local id = ARGV[1]
local k = jkey(id)
local s, f, q, task, prio, expires = unpack(redis.call('HMGET', k, 's', 'f', 'q', 't', 'p', 'ex'))
if s ~= 'running' or (f or '0') ~= ARGV[2] then
  local done = acked(k, ARGV[8])
  if done then return done end
  -- A repeat of this failure that took effect (same fence, this error stored last, the job in
  -- a state it leads to, not held) answers the state it wrote (backends/common.repeated_fail).
  if not s or (f or '0') ~= ARGV[2] or tonumber(ARGV[2]) <= 0 then return false end
  if redis.call('HEXISTS', k, 'lo') == 1 or redis.call('HGET', k, 'e') ~= ARGV[3] then
    return false
  end
  if ARGV[4] == '' then
    if s == ARGV[6] then return s end
  elseif tonumber(ARGV[4]) <= 0 then
    if s == 'queued' then return s end
  elseif s == 'scheduled' or s == 'queued' then
    return 'scheduled'
  end
  return false
end
local t = clock(ARGV[5])
record_error(k, ARGV[3])
redis.call('HDEL', k, 'lo', 'lu')
redis.call('ZREM', B .. 'lease', id)
if ARGV[4] == '' then
  local terminal = ARGV[6]
  local dlq = opt(ARGV[7])
  redis.call('HSET', k, 'fa', fmt(t))
  if terminal == 'failed' and dlq then
    redis.call('HSET', k, 'dl', dlq)
  else
    redis.call('HDEL', k, 'dl')
  end
  move(id, q, task, 'running', terminal)
  ack(k, ARGV[8], terminal)
  finished(id)
  flush()
  return terminal
end
local delay = tonumber(ARGV[4])
local run_at = fmt(t + math.max(delay, 0))
redis.call('HSET', k, 'ra', run_at)
local state = 'scheduled'
if delay <= 0 then state = 'queued' end
move(id, q, task, 'running', state)
ack(k, ARGV[8], state)
if state == 'queued' then make_ready(id, q, prio or '0', run_at) else schedule(id, q, run_at) end
if expires then redis.call('ZADD', B .. 'exp', expires, id) end
wake(q)
flush()
return state
