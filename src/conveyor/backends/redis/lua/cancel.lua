#!lua flags=allow-oom
-- cancel: waiting -> cancelled at once; running -> flag it and tell its worker (PUBLISH).
-- ARGV: id, reason (opt), now. Returns the CancelOutcome value.
local id = ARGV[1]
local k = jkey(id)
local s, q, task, prio, attempts = unpack(redis.call('HMGET', k, 's', 'q', 't', 'p', 'a'))
if not s then return 'not_found' end
local reason = opt(ARGV[2])
if WAITING[s] then
  local t = clock(ARGV[3])
  leave_waiting(id, q, s, prio or '0')
  redis.call('HSET', k, 'fa', fmt(t))
  if reason then redis.call('HSET', k, 'cx', reason) else redis.call('HDEL', k, 'cx') end
  record_error(k, err_json('cancelled', 'Cancelled', reason or 'cancelled', attempts, t))
  move(id, q, task, s, 'cancelled')
  finished(id)
  flush()
  return 'cancelled'
end
if s == 'running' then
  redis.call('HSET', k, 'cr', '1')
  if reason then redis.call('HSET', k, 'cx', reason) else redis.call('HDEL', k, 'cx') end
  redis.call('PUBLISH', B .. 'cancel', id)
  return 'requested'
end
return 'not_cancellable'
