-- Conveyor: helpers of the event-bus scripts (bus_*.lua include this with `--! bus_lib.lua`).
--
-- Keys (under the same base B, so one Cluster slot):
--   B..'bus'                 HASH   pos (last position), ver (subscription set version)
--   B..'bsub'                HASH   subscription name -> JSON {pattern, spec, position, created}
--   B..'blog'                STREAM the log: entry id '<position>-0', fields i n p k pr h v o s
--   B..'bids'                HASH   event id -> position
--   B..'bdp'                 ZSET   positions that have deliveries (score = member = position)
--   B..'bdl:'<pos>           ZSET   subscriptions with a delivery of that event (score 0)
--   B..'bd:'<pos>':'<sub>    HASH   one delivery: e event id, j job id, s status, c chain,
--                                   q place in the chain, t created, f finished
--   B..'bds:'<sub>           ZSET   positions of a subscription's deliveries
--   B..'bdj'                 HASH   job id -> '<pos>:<sub>' (the delivery it runs)
--   B..'bcm:'<sub>':'<chain> ZSET   the deliveries in a chain (member position, score place)
--   B..'bcseq'               HASH   <sub> \0 <chain> -> last place handed out in that chain
--   B..'bchains'             SET    <sub> \0 <chain> of every chain with deliveries in it
-- <sub> and <chain> are escaped like queue names. Positions come from HINCRBY inside the
-- publishing script, so they follow commit order.

local BUS, BSUB, BLOG, BIDS = B .. 'bus', B .. 'bsub', B .. 'blog', B .. 'bids'
local BDP, BDJ, BCSEQ, BCHAINS = B .. 'bdp', B .. 'bdj', B .. 'bcseq', B .. 'bchains'
local JOB_ARGS = 11
local TERMINAL = {completed = true, failed = true, cancelled = true, expired = true}
local ACTIVE = {queued = true, scheduled = true, running = true}

local function pos_str(p) return string.format('%d', p) end
local function bd_key(p, sub) return B .. 'bd:' .. p .. ':' .. escape(sub) end
local function bdl_key(p) return B .. 'bdl:' .. p end
local function bds_key(sub) return B .. 'bds:' .. escape(sub) end
local function bcm_key(sub, chain) return B .. 'bcm:' .. escape(sub) .. ':' .. escape(chain) end

local LAST_PAYLOAD = nil

-- Writes of many deliveries that need no reading back inside the script go together at the
-- end (bus_flush): one ZADD per sorted set, one HSET per hash, one wake-up per queue.
local ZADDS, HSETS, QUEUES = {}, {}, {}

local function later(map, key, a, b)
  local list = map[key]
  if not list then list = {}; map[key] = list end
  list[#list + 1] = a
  list[#list + 1] = b
end

local function bus_flush()
  for key, list in pairs(ZADDS) do
    each_chunk(list, 2000, function(...) redis.call('ZADD', key, ...) end)
  end
  for key, list in pairs(HSETS) do
    each_chunk(list, 2000, function(...) redis.call('HSET', key, ...) end)
  end
  for q in pairs(QUEUES) do
    redis.call('SADD', B .. 'queues', q)
    wake(q)
  end
  ZADDS, HSETS, QUEUES = {}, {}, {}
  flush()
end

local function bus_payload(a, i)
  -- The payload of the delivery job whose JOB_ARGS start at a[i]: '=' .. bytes, or '' for
  -- the previous delivery's (an event's deliveries share one envelope). Call it for every
  -- delivery in order, skipped ones included.
  local arg = a[i + 3]
  if arg ~= '' then LAST_PAYLOAD = string.sub(arg, 2) end
  return LAST_PAYLOAD
end

local function bus_new_job(a, i, payload, blocked, t, now)
  -- Store the delivery job whose JOB_ARGS arguments start at a[i] (as enqueue.lua stores one
  -- job without idempotency key, workflow or expiry). Returns its id.
  local id, task, q = a[i], a[i + 1], a[i + 2]
  local prio, max_attempts, timeout, trace = a[i + 4], a[i + 5], a[i + 6], opt(a[i + 7])
  local md, pv, run_at = a[i + 8], a[i + 9], a[i + 10]
  if run_at == '' then
    run_at = now
  elseif string.sub(run_at, 1, 1) == '+' then
    run_at = fmt(t + tonumber(string.sub(run_at, 2)))
  end
  local state = 'queued'
  if blocked then
    state = 'blocked'
  elseif tonumber(run_at) > t then
    state = 'scheduled'
  end
  local fields = {'t', task, 'q', q, 's', state, 'ra', run_at, 'c', now}
  local function put(name, value) fields[#fields + 1] = name; fields[#fields + 1] = value end
  if prio ~= '0' then put('p', prio) end
  if max_attempts ~= '1' then put('ma', max_attempts) end
  if timeout ~= '' then put('to', timeout) end
  if trace then put('tr', trace) end
  if md ~= '' then put('md', md) end
  if pv ~= '1' then put('pv', pv) end
  redis.call('HSET', jkey(id), unpack(fields))
  redis.call('SET', dkey(id), payload)
  index_add(id, q, task, state)
  if state == 'queued' then
    later(ZADDS, qkey(q, 'r:' .. prio), run_at, id)
    later(ZADDS, qkey(q, 'p'), -tonumber(prio), prio)
  elseif state == 'scheduled' then
    schedule(id, q, run_at)
  end
  QUEUES[q] = true
  return id
end

local function bus_add_delivery(p, ev, sub, chain, a, i, payload, t, now)
  -- A live delivery of event `ev` (at position p) to `sub`, joining its chain, and its job.
  local blocked, seq = false, 0
  if chain then
    local ck = sub .. '\0' .. chain
    local mk = bcm_key(sub, chain)
    seq = redis.call('HINCRBY', BCSEQ, ck, 1)
    blocked = redis.call('ZCARD', mk) > 0
    redis.call('ZADD', mk, seq, p)
    redis.call('SADD', BCHAINS, ck)
  end
  local job = a[i]
  local fields = {'e', ev, 'j', job, 's', 'live', 'q', seq, 't', now}
  if chain then fields[#fields + 1] = 'c'; fields[#fields + 1] = chain end
  redis.call('HSET', bd_key(p, sub), unpack(fields))
  later(ZADDS, bdl_key(p), 0, sub)
  later(ZADDS, BDP, p, p)
  later(ZADDS, bds_key(sub), p, p)
  later(HSETS, BDJ, job, p .. ':' .. sub)
  bus_new_job(a, i, payload, blocked, t, now)
end

local function bus_unblock(id)
  local k = jkey(id)
  local s, q, task, prio, run_at, ex = unpack(redis.call('HMGET', k, 's', 'q', 't', 'p', 'ra', 'ex'))
  if s ~= 'blocked' then return end
  move(id, q, task, 'blocked', 'queued')
  make_ready(id, q, prio or '0', run_at)
  if ex then redis.call('ZADD', B .. 'exp', ex, id) end
  wake(q)
end

local function bus_advance(sub, chain, now)
  -- Make the chain's first delivery runnable (see MemoryEvents._advance); how many deliveries
  -- whose job ended without finishing were marked on the way.
  local mk = bcm_key(sub, chain)
  local marked = 0
  while true do
    local head = redis.call('ZRANGE', mk, 0, 0)[1]
    if not head then
      local ck = sub .. '\0' .. chain
      redis.call('SREM', BCHAINS, ck)
      redis.call('HDEL', BCSEQ, ck)
      return marked
    end
    local dk = bd_key(head, sub)
    local status, job = unpack(redis.call('HMGET', dk, 's', 'j'))
    local state = job and redis.call('HGET', jkey(job), 's')
    if status == 'live' and state == 'blocked' then
      bus_unblock(job)
      return marked
    end
    if status == 'live' and ACTIVE[state] then return marked end
    if status == 'live' then
      redis.call('HSET', dk, 's', (state == 'completed') and 'handled' or 'dead', 'f', now)
      marked = marked + 1
    end
    redis.call('ZREM', mk, head)
  end
end

local function bus_leave_chain(p, sub, chain, now)
  if chain and redis.call('ZREM', bcm_key(sub, chain), p) == 1 then
    return bus_advance(sub, chain, now)
  end
  return 0
end
