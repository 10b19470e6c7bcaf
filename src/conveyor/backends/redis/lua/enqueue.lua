-- enqueue: store a batch of jobs atomically and in order, honouring idempotency keys.
-- ARGV: now, then 17 values per job:
--   id task queue payload priority run_at max_attempts timeout expires_at idempotency_key
--   concurrency_key trace_id metadata workflow_id parents payload_version blocked
-- ('' for an absent number or empty JSON, opt() encoding for optional strings; run_at '' is
-- now and '+<seconds>' that long after now, on the store's clock.)
-- Returns: id, created (1/0), state for every job.
-- The job hash and the idempotency key are written job by job (later jobs of the batch see
-- them); the queue structures are written once per key at the end.
local t = clock(ARGV[1])
local now = fmt(t)
local out = {}
local N = 17
local ready, levels, sched, due, expiry, queues = {}, {}, {}, {}, {}, {}

local function push(map, key, score, member)
  local list = map[key]
  if not list then list = {}; map[key] = list end
  list[#list + 1] = score
  list[#list + 1] = member
end

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
    if run_at == '' then
      run_at = now
    elseif string.sub(run_at, 1, 1) == '+' then
      run_at = fmt(t + tonumber(string.sub(run_at, 2)))
    end
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
    if ikey then redis.call('HSET', B .. 'idem', ikey, id) end
    queues[q] = true
    index_add(id, q, task, state)
    if state == 'queued' then
      push(ready, qkey(q, 'r:' .. prio), run_at, id)
      push(levels, qkey(q, 'p'), -tonumber(prio), prio)
    elseif state == 'scheduled' then
      push(sched, qkey(q, 's'), run_at, id)
      if due[q] == nil or tonumber(run_at) < tonumber(due[q]) then due[q] = run_at end
    end
    if state ~= 'blocked' and expires ~= '' then push(expiry, B .. 'exp', expires, id) end
    out[#out + 1] = id; out[#out + 1] = 1; out[#out + 1] = state
  end
end

for _, map in ipairs({ready, levels, sched, expiry}) do
  for key, list in pairs(map) do
    each_chunk(list, 2000, function(...) redis.call('ZADD', key, ...) end)
  end
end
for q, run_at in pairs(due) do redis.call('ZADD', B .. 'due', 'LT', run_at, q) end
for q in pairs(queues) do
  redis.call('SADD', B .. 'queues', q)
  wake(q)
end
flush()
return out
