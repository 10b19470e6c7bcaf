-- Conveyor: the claim transition as a function, shared by claim.lua and complete_claim.lua.
-- Prepended (after lib.lua) to the scripts that name it on a leading '--! ' line.

-- Numeric fields of a job hash a claim reads (absent: the default). A job with any other value
-- there (a corrupt record) cannot be run: it is dead-lettered with code invalid_payload.
local NUMERIC = {p = 'priority', a = 'attempts', ma = 'max attempts', f = 'fence',
  to = 'timeout', pv = 'payload version', c = 'created at', st = 'stalls'}

local function unreadable(fields, values)
  -- The first field of `fields` (names) whose value in `values` is not a number, or nil.
  for i, name in ipairs(fields) do
    local v = values[i]
    if NUMERIC[name] and v and tonumber(v) == nil then return NUMERIC[name] end
  end
  return nil
end

-- The jobs this claim dead-lettered (5 values each: id, task, queue, attempts, field), returned
-- with the claimed ones so the worker can log and count them.
local DEAD = {}

local function dead_unreadable(id, q, task, from, attempts, t, what)
  -- A waiting job whose record cannot be decoded: failed at once (the dead-letter set).
  local n = #DEAD
  DEAD[n + 1] = id; DEAD[n + 2] = task or ''; DEAD[n + 3] = q
  DEAD[n + 4] = tostring(tonumber(attempts or '0') or 0); DEAD[n + 5] = what
  local k = jkey(id)
  redis.call('HSET', k, 'fa', fmt(t))
  redis.call('HDEL', k, 'lo', 'lu')
  redis.call('ZREM', B .. 'exp', id)
  record_error(k, err_json('invalid_payload', 'InvalidPayload',
    'the stored job record cannot be decoded: ' .. what .. ' is not a number',
    tostring(tonumber(attempts or '0') or 0), t))
  move(id, q, task, from, 'failed')
  finished(id)
end

local function claim_jobs(i0)
  -- ARGV from i0: worker, limit, lease, now, budget, nq, queue..., nt (-1: all tasks),
  -- pattern..., nx, excluded... Returns 17 values per claimed job.
  local worker, limit, lease = ARGV[i0], tonumber(ARGV[i0 + 1]), tonumber(ARGV[i0 + 2])
  local t = clock(ARGV[i0 + 3])
  local now = fmt(t)
  local budget = tonumber(ARGV[i0 + 4])
  local i = i0 + 5
  local queues = {}
  for j = 1, tonumber(ARGV[i]) do queues[j] = ARGV[i + j] end
  i = i + #queues + 1
  local nt = tonumber(ARGV[i])
  local patterns = nil
  if nt >= 0 then
    patterns = {}
    for j = 1, nt do
      -- A pattern is split at '*': its pieces must appear in order, the first as a prefix and
      -- the last as a suffix. Every other character is literal.
      local pieces, p, start = {}, ARGV[i + j], 1
      while true do
        local star = string.find(p, '*', start, true)
        if not star then pieces[#pieces + 1] = string.sub(p, start); break end
        pieces[#pieces + 1] = string.sub(p, start, star - 1)
        start = star + 1
      end
      patterns[j] = pieces
    end
    i = i + nt
  end
  i = i + 1
  local excluded = {}
  local nx = tonumber(ARGV[i])
  for j = 1, nx do excluded[ARGV[i + j]] = true end
  local filtered = patterns ~= nil or nx > 0

  local function glob(s, pieces)
    local n = #pieces
    if n == 1 then return s == pieces[1] end
    local first, last = pieces[1], pieces[n]
    if #s < #first + #last then return false end
    if string.sub(s, 1, #first) ~= first then return false end
    if #last > 0 and string.sub(s, -#last) ~= last then return false end
    local pos, stop = #first + 1, #s - #last
    for j = 2, n - 1 do
      local piece = pieces[j]
      if #piece > 0 then
        local a, b = string.find(s, piece, pos, true)
        if not a or b > stop then return false end
        pos = b + 1
      end
    end
    return true
  end

  local function wanted(task)
    if excluded[task] then return false end
    if patterns == nil then return true end
    for _, pieces in ipairs(patterns) do
      if glob(task, pieces) then return true end
    end
    return false
  end

  -- 1. Expire waiting jobs whose TTL passed (any queue).
  local stale = redis.call('ZRANGEBYSCORE', B .. 'exp', '-inf', now, 'LIMIT', 0, budget)
  for _, id in ipairs(stale) do
    local k = jkey(id)
    local s, q, task, prio, attempts = unpack(redis.call('HMGET', k, 's', 'q', 't', 'p', 'a'))
    if s == 'queued' or s == 'scheduled' then
      leave_waiting(id, q, s, prio or '0')
      redis.call('HSET', k, 'fa', now)
      record_error(k, err_json('expired', 'Expired', "the job's TTL passed before it started",
        attempts, t))
      move(id, q, task, s, 'expired')
      finished(id)
    else
      redis.call('ZREM', B .. 'exp', id)
    end
  end

  -- 2. Promote scheduled jobs that are due (any queue).
  for _, q in ipairs(redis.call('ZRANGEBYSCORE', B .. 'due', '-inf', now)) do
    local sk = qkey(q, 's')
    local due = redis.call('ZRANGEBYSCORE', sk, '-inf', now, 'LIMIT', 0, budget)
    for _, id in ipairs(due) do
      local k = jkey(id)
      local task, prio, run_at, attempts = unpack(redis.call('HMGET', k, 't', 'p', 'ra', 'a'))
      redis.call('ZREM', sk, id)
      if prio and tonumber(prio) == nil then
        dead_unreadable(id, q, task, 'scheduled', attempts, t, 'priority')
      else
        move(id, q, task, 'scheduled', 'queued')
        make_ready(id, q, prio or '0', run_at)
      end
    end
    local head = redis.call('ZRANGE', sk, 0, 0, 'WITHSCORES')
    if head[1] then
      redis.call('ZADD', B .. 'due', head[2], q)
    else
      redis.call('ZREM', B .. 'due', q)
    end
    if #due > 0 then wake(q) end
  end

  -- 3. Lease jobs: one HMGET and one HSET per job; the rest is written once per key.
  -- A job that stalled twice or more (stalls > 1) may be what kills its workers, so a worker
  -- holds at most one such job: the claim stops at the first one when the worker holds one already,
  -- else at the second (as MemoryBackend.claim). Whether it holds one is looked up only when
  -- such a job comes next (it scans the running jobs).
  local out = {}
  local taken = 0
  local lease_until = fmt(t + lease)
  local leases = {}
  local suspect = nil

  local function holds_suspect()
    for _, id in ipairs(redis.call('ZRANGE', B .. 'lease', 0, -1)) do
      local s, lo, st = unpack(redis.call('HMGET', jkey(id), 's', 'lo', 'st'))
      if s == 'running' and lo == worker and tonumber(st or '0') > 1 then return true end
    end
    return false
  end

  local ROW = {'t', 'p', 'a', 'ma', 'f', 'to', 'tr', 'ik', 'md', 'pv', 'c', 'st', 'w', 'ex'}

  local function take(id, q)
    -- Lease one job: true; false (and nothing changed) when the claim must stop before it;
    -- 'dead' when its record cannot be decoded (then it was dead-lettered instead).
    local k = jkey(id)
    local row = redis.call('HMGET', k, unpack(ROW))
    local bad = unreadable(ROW, row)
    if bad then
      dead_unreadable(id, q, row[1], 'queued', row[3], t, bad)
      return 'dead'
    end
    if tonumber(row[12] or '0') > 1 then
      if suspect == nil then suspect = holds_suspect() end
      if suspect then return false end
      suspect = true
    end
    local attempts = tonumber(row[3] or '0') + 1
    local fence = tonumber(row[5] or '0') + 1
    redis.call('HSET', k, 's', 'running', 'a', attempts, 'f', fence, 'lo', worker, 'lu',
      lease_until, 'sa', now)
    if row[14] then redis.call('ZREM', B .. 'exp', id) end
    leases[#leases + 1] = lease_until
    leases[#leases + 1] = id
    index_remove(id, q, row[1], 'queued')
    index_add(id, q, row[1], 'running')
    local n = #out
    out[n + 1] = id; out[n + 2] = row[1]; out[n + 3] = q; out[n + 4] = redis.call('GET', dkey(id))
    out[n + 5] = row[2]; out[n + 6] = attempts; out[n + 7] = row[4]; out[n + 8] = fence
    out[n + 9] = lease_until
    for j = 6, 13 do out[n + 4 + j] = row[j] end
    taken = taken + 1
    return true
  end

  if limit > 0 then
    local stop = false
    for _, q in ipairs(queues) do
      if taken >= limit or stop then break end
      local pk = qkey(q, 'p')
      for _, prio in ipairs(redis.call('ZRANGE', pk, 0, -1)) do
        if taken >= limit or stop then break end
        local rk = qkey(q, 'r:' .. prio)
        local picked
        if not filtered then
          picked = redis.call('ZRANGE', rk, 0, limit - taken - 1)
        else
          local offset, chunk = 0, 100
          picked = {}
          while #picked < limit - taken do
            local ids = redis.call('ZRANGE', rk, offset, offset + chunk - 1)
            for _, id in ipairs(ids) do
              if wanted(redis.call('HGET', jkey(id), 't')) then
                picked[#picked + 1] = id
                if #picked >= limit - taken then break end
              end
            end
            if #ids < chunk then break end
            offset = offset + chunk
          end
        end
        local took = {}
        for _, id in ipairs(picked) do
          local ok = take(id, q)
          if not ok then stop = true; break end
          took[#took + 1] = id
        end
        if #took > 0 then
          each_chunk(took, 1000, function(...) redis.call('ZREM', rk, ...) end)
          if redis.call('EXISTS', rk) == 0 then redis.call('ZREM', pk, prio) end
        end
      end
      -- Work is left: wake the next idle worker of this queue.
      if redis.call('EXISTS', pk) == 1 then wake(q) end
    end
  end
  if #leases > 0 then
    each_chunk(leases, 2000, function(...) redis.call('ZADD', B .. 'lease', ...) end)
  end
  flush()
  return out
end
