-- Conveyor: choosing jobs by filter in id order (list_jobs, retry_jobs, delete_jobs).
-- Prepended (after lib.lua) to the scripts that name it in their first line.

local function bytes_lt(a, b)
  -- Byte order, as ZSET members sort (Lua's '<' follows the server's locale).
  local n = math.min(#a, #b)
  for j = 1, n do
    local x, y = string.byte(a, j), string.byte(b, j)
    if x ~= y then return x < y end
  end
  return #a < #b
end

local function read_filter(start)
  -- ARGV from `start`: nq queue... ns state... ids_flag nids id... task code before workflow
  -- Returns the filter table and the index after it.
  local flt = {}
  local i = start
  local nq = tonumber(ARGV[i]); flt.queues = {}
  for j = 1, nq do flt.queues[j] = ARGV[i + j] end
  i = i + nq + 1
  local ns = tonumber(ARGV[i]); flt.states = {}; flt.state_set = {}
  for j = 1, ns do flt.states[j] = ARGV[i + j]; flt.state_set[ARGV[i + j]] = true end
  i = i + ns + 1
  local nids = tonumber(ARGV[i])
  if nids >= 0 then
    flt.ids = {}
    for j = 1, nids do flt.ids[j] = ARGV[i + j] end
    i = i + nids
  end
  i = i + 1
  flt.task = opt(ARGV[i]); flt.code = opt(ARGV[i + 1]); flt.wf = opt(ARGV[i + 3])
  if ARGV[i + 2] ~= '' then flt.before = tonumber(ARGV[i + 2]) end
  flt.queue = nil
  flt.scan = flt.task or flt.code or flt.wf or flt.before
  return flt, i + 4
end

local function passes(id, flt, check_index)
  -- The job's fields against the filter (state and queue only when check_index).
  if not (flt.scan or check_index) then return true end
  local s, q, task, e, fa, wf = unpack(redis.call('HMGET', jkey(id), 's', 'q', 't', 'e', 'fa', 'w'))
  if not s then return false end
  if check_index then
    if not flt.state_set[s] then return false end
    if flt.queue_set and not flt.queue_set[q] then return false end
  end
  if flt.task and task ~= flt.task then return false end
  if flt.wf and wf ~= flt.wf then return false end
  if flt.before and (not fa or tonumber(fa) >= flt.before) then return false end
  if flt.code and (not e or cjson.decode(e).code ~= flt.code) then return false end
  return true
end

local function select_ids(flt, desc, offset, limit, budget, start)
  -- Ids of matching jobs in id order (descending when desc), after skipping `offset`;
  -- `start` (optional) is an exclusive keyset cursor (browse.lua).
  local out, skipped, seen = {}, 0, 0
  if limit <= 0 then return out end
  local function keep(id)
    if skipped < offset then skipped = skipped + 1 else out[#out + 1] = id end
    return #out >= limit
  end
  if flt.ids then
    if #flt.queues > 0 then
      flt.queue_set = {}
      for _, q in ipairs(flt.queues) do flt.queue_set[q] = true end
    end
    local ids, uniq = {}, {}
    for _, id in ipairs(flt.ids) do
      if not uniq[id] then uniq[id] = true; ids[#ids + 1] = id end
    end
    if desc then table.sort(ids, function(a, b) return bytes_lt(b, a) end)
    else table.sort(ids, bytes_lt) end
    for _, id in ipairs(ids) do
      if passes(id, flt, true) and keep(id) then break end
    end
    return out
  end
  local queues = flt.queues
  if #queues == 0 then queues = redis.call('SMEMBERS', B .. 'queues') end
  local cursors = {}
  for _, q in ipairs(queues) do
    for _, s in ipairs(flt.states) do
      cursors[#cursors + 1] = {key = qkey(q, 'x:' .. s), buf = {}, pos = 1, done = false, last = start}
    end
  end
  local chunk = 128
  local function head(c)
    if c.pos > #c.buf then
      if c.done then return nil end
      local from = c.last and ('(' .. c.last)
      if desc then
        c.buf = redis.call('ZRANGE', c.key, from or '+', '-', 'BYLEX', 'REV', 'LIMIT', 0, chunk)
      else
        c.buf = redis.call('ZRANGE', c.key, from or '-', '+', 'BYLEX', 'LIMIT', 0, chunk)
      end
      c.pos = 1
      if #c.buf < chunk then c.done = true end
      if #c.buf == 0 then return nil end
      c.last = c.buf[#c.buf]
    end
    return c.buf[c.pos]
  end
  while seen < budget do
    local best, at = nil, nil
    for j, c in ipairs(cursors) do
      local h = head(c)
      if h and (best == nil or (desc and bytes_lt(best, h)) or (not desc and bytes_lt(h, best))) then
        best, at = h, j
      end
    end
    if best == nil then break end
    cursors[at].pos = cursors[at].pos + 1
    seen = seen + 1
    if passes(best, flt, false) and keep(best) then break end
  end
  return out
end
