-- enqueue: store a batch of jobs atomically and in order, honouring idempotency keys.
-- ARGV: now, then 17 values per job:
--   id task queue payload priority run_at max_attempts timeout expires_at idempotency_key
--   concurrency_key trace_id metadata workflow_id parents payload_version blocked
-- ('' for an absent number or empty JSON, opt() encoding for optional strings.)
-- Returns: id, created (1/0), state for every job.
local t = clock(ARGV[1])
local now = fmt(t)
local out = {}
local woken = {}
local N = 17
for base = 2, #ARGV, N do
  local id, task, q, payload = ARGV[base], ARGV[base + 1], ARGV[base + 2], ARGV[base + 3]
  local prio, run_at, max_attempts = ARGV[base + 4], ARGV[base + 5], ARGV[base + 6]
  local timeout, expires = ARGV[base + 7], ARGV[base + 8]
  local ikey = opt(ARGV[base + 9])
  local done = false
  if ikey then
    local holder = redis.call('HGET', B .. 'idem', ikey)
    if holder then
      local state = redis.call('HGET', jkey(holder), 's')
      if state and HOLDING[state] then
        out[#out + 1] = holder; out[#out + 1] = 0; out[#out + 1] = state
        done = true
      end
    end
  end
  local k = jkey(id)
  if not done then
    local state = redis.call('HGET', k, 's')
    if state then
      out[#out + 1] = id; out[#out + 1] = 0; out[#out + 1] = state
      done = true
    end
  end
  if not done then
    if run_at == '' then run_at = now end
    local state
    if ARGV[base + 16] == '1' then
      state = 'blocked'
    elseif tonumber(run_at) > t then
      state = 'scheduled'
    else
      state = 'queued'
    end
    local fields = {'t', task, 'q', q, 's', state, 'ra', run_at, 'c', now}
    local function put(name, value)
      fields[#fields + 1] = name; fields[#fields + 1] = value
    end
    if prio ~= '0' then put('p', prio) end
    if max_attempts ~= '1' then put('ma', max_attempts) end
    if timeout ~= '' then put('to', timeout) end
    if expires ~= '' then put('ex', expires) end
    if ikey then put('ik', ikey) end
    local ckey, trace, wf = opt(ARGV[base + 10]), opt(ARGV[base + 11]), opt(ARGV[base + 13])
    if ckey then put('ck', ckey) end
    if trace then put('tr', trace) end
    if ARGV[base + 12] ~= '' then put('md', ARGV[base + 12]) end
    if wf then put('w', wf) end
    if ARGV[base + 14] ~= '' then put('pa', ARGV[base + 14]) end
    if ARGV[base + 15] ~= '1' then put('pv', ARGV[base + 15]) end
    redis.call('HSET', k, unpack(fields))
    redis.call('SET', dkey(id), payload)
    redis.call('SADD', B .. 'queues', q)
    index_add(id, q, task, state)
    if ikey then redis.call('HSET', B .. 'idem', ikey, id) end
    if state ~= 'blocked' then
      if state == 'queued' then make_ready(id, q, prio, run_at) else schedule(id, q, run_at) end
      if expires ~= '' then redis.call('ZADD', B .. 'exp', expires, id) end
      if not woken[q] then wake(q); woken[q] = true end
    end
    out[#out + 1] = id; out[#out + 1] = 1; out[#out + 1] = state
  end
end
return out
