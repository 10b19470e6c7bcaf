#!lua flags=allow-oom
-- recover_expired: running jobs whose lease expired get stalls + 1 and are cancelled (a
-- cancellation was asked), dead-lettered as poison messages (too many stalls) or queued
-- again with their run-at unchanged. ARGV: max_stalls, now, limit.
-- Returns id, task, queue, state, stalls, attempts for each recovered job.
local max_stalls = tonumber(ARGV[1])
local t = clock(ARGV[2])
local now = fmt(t)
local out = {}
local expired = redis.call('ZRANGEBYSCORE', B .. 'lease', '-inf', '(' .. now, 'LIMIT', 0,
  tonumber(ARGV[3]))
for _, id in ipairs(expired) do
  local k = jkey(id)
  redis.call('ZREM', B .. 'lease', id)
  local s, q, task, prio, attempts, run_at, expires, cr, reason = unpack(redis.call('HMGET', k,
    's', 'q', 't', 'p', 'a', 'ra', 'ex', 'cr', 'cx'))
  if s == 'running' then
    local stalls = redis.call('HINCRBY', k, 'st', 1)
    redis.call('HDEL', k, 'lo', 'lu')
    local state
    if cr then
      state = 'cancelled'
      redis.call('HSET', k, 'fa', now)
      record_error(k, err_json('cancelled', 'Cancelled', reason or 'cancelled', attempts, t))
      finished(id)
    elseif stalls > max_stalls then
      state = 'failed'
      redis.call('HSET', k, 'fa', now)
      record_error(k, err_json('poison_message', 'Stalled', "the job's lease expired " .. stalls
        .. ' times (worker died or hung); the limit is ' .. max_stalls, attempts, t))
      finished(id)
    else
      state = 'queued'
      make_ready(id, q, prio or '0', run_at)
      if expires then redis.call('ZADD', B .. 'exp', expires, id) end
      wake(q)
    end
    move(id, q, task, 'running', state)
    out[#out + 1] = id; out[#out + 1] = task; out[#out + 1] = q; out[#out + 1] = state
    out[#out + 1] = stalls; out[#out + 1] = tonumber(attempts or '0')
  end
end
flush()
return out
