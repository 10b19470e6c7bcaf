-- Conveyor: helpers shared by every script. redis_scripts.py prepends this file to each one.
--
-- KEYS[1] is the key base: "{prefix}:" on a single Redis, the queue's own "{prefix:queue}:" on
-- a Redis Cluster (where every call is about one queue; see redis/cluster.py). Every key a
-- script touches starts with it, so all of them hash to one slot. The layout is documented in
-- docs/redis.md:
--
--   B..'j:'<id>            HASH  one job (short field names, defaults omitted)
--   B..'d:'<id>            STRING its payload (apart, so the hash stays listpack-encoded)
--   B..'idem'              HASH  idempotency key -> id of the job that took it last
--   B..'queues'            SET   every queue name ever used
--   B..'due'               ZSET  queue -> earliest run-at of its scheduled jobs (may be early)
--   B..'exp'               ZSET  waiting job id -> expires-at
--   B..'lease'             ZSET  running job id -> lease-until
--   B..'counts'            HASH  state \0 len(queue) \0 queue task -> number of jobs
--   B..'q:'<q>':p'         ZSET  priority levels with ready jobs, score -priority
--   B..'q:'<q>':r:'<prio>  ZSET  ready jobs of one priority, score run-at, member id
--   B..'q:'<q>':s'         ZSET  scheduled jobs, score run-at
--   B..'q:'<q>':m'         ZSET  wake-up marker workers BZPOPMIN on
--   B..'q:'<q>':x:'<state> ZSET  all jobs of the queue in a state, score 0 (id order)
--   B..'kv:'<namespace>    HASH  small shared state (schedules), compare-and-set by kv_swap
--   B..'workers' / 'beats' HASH / ZSET  worker registry and last heartbeats
--
-- <q> is the queue name with '%', ':', '{' and '}' percent-escaped. Numbers are written with
-- '%.17g' so that every float survives the trip through Lua exactly.

local B = KEYS[1]

local HOLDING = {scheduled = true, queued = true, running = true, blocked = true, completed = true}
local WAITING = {scheduled = true, queued = true, blocked = true}

local function opt(s)
  -- Optional string argument: '' is nil, '=' .. value is value.
  if s == nil or s == '' then return nil end
  return string.sub(s, 2)
end

local function fmt(x)
  return string.format('%.17g', x)
end

local function clock(arg)
  -- The caller's time, or the store's clock when none was given.
  if arg ~= nil and arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local ESCAPED = {}

local function escape(s)
  local e = ESCAPED[s]
  if not e then
    e = string.gsub(s, '[%%:{}]', function(c) return string.format('%%%02X', string.byte(c)) end)
    ESCAPED[s] = e
  end
  return e
end

local function jkey(id)
  return B .. 'j:' .. id
end

local function dkey(id)
  return B .. 'd:' .. id
end

local function qkey(q, suffix)
  return B .. 'q:' .. escape(q) .. ':' .. suffix
end

-- Counters and state indexes change by many small steps in one script (a batch, a claim that
-- promotes then takes a job). They are collected as net deltas and written once by flush(),
-- which every script that changes a state calls before it returns.
local COUNTS, INDEX = {}, {}

local function count(q, t, s, n)
  local field = s .. '\0' .. #q .. '\0' .. q .. t
  COUNTS[field] = (COUNTS[field] or 0) + n
end

local function index(id, q, t, s, n)
  count(q, t, s, n)
  local key = qkey(q, 'x:' .. s)
  local members = INDEX[key]
  if not members then members = {}; INDEX[key] = members end
  members[id] = (members[id] or 0) + n
end

local function index_add(id, q, t, s) index(id, q, t, s, 1) end
local function index_remove(id, q, t, s) index(id, q, t, s, -1) end

local function each_chunk(list, size, fn)
  for i = 1, #list, size do fn(unpack(list, i, math.min(i + size - 1, #list))) end
end

local function flush()
  for field, n in pairs(COUNTS) do
    if n ~= 0 and redis.call('HINCRBY', B .. 'counts', field, n) <= 0 then
      redis.call('HDEL', B .. 'counts', field)
    end
  end
  COUNTS = {}
  for key, members in pairs(INDEX) do
    local add, rem = {}, {}
    for id, n in pairs(members) do
      if n > 0 then add[#add + 1] = 0; add[#add + 1] = id elseif n < 0 then rem[#rem + 1] = id end
    end
    if #add > 0 then each_chunk(add, 2000, function(...) redis.call('ZADD', key, ...) end) end
    if #rem > 0 then each_chunk(rem, 1000, function(...) redis.call('ZREM', key, ...) end) end
  end
  INDEX = {}
end

local function move(id, q, t, from, to)
  -- Change the job's state field, its counters and its state index.
  redis.call('HSET', jkey(id), 's', to)
  index_remove(id, q, t, from)
  index_add(id, q, t, to)
end

local function make_ready(id, q, prio, run_at)
  redis.call('ZADD', qkey(q, 'r:' .. prio), run_at, id)
  redis.call('ZADD', qkey(q, 'p'), -tonumber(prio), prio)
end

local function unready(id, q, prio)
  local rk = qkey(q, 'r:' .. prio)
  redis.call('ZREM', rk, id)
  if redis.call('ZCARD', rk) == 0 then redis.call('ZREM', qkey(q, 'p'), prio) end
end

local function schedule(id, q, run_at)
  redis.call('ZADD', qkey(q, 's'), run_at, id)
  redis.call('ZADD', B .. 'due', 'LT', run_at, q)
end

local function leave_waiting(id, q, s, prio)
  -- Take a waiting job out of the structures claim reads (ready, scheduled, expiry).
  if s == 'queued' then
    unready(id, q, prio)
  elseif s == 'scheduled' then
    redis.call('ZREM', qkey(q, 's'), id)
  end
  redis.call('ZREM', B .. 'exp', id)
end

local function wake(q)
  redis.call('ZADD', qkey(q, 'm'), 0, '1')
end

local function finished(id)
  redis.call('PUBLISH', B .. 'done:' .. id, '1')
end

local function err_json(code, typ, message, attempt, t)
  return '{"code":' .. cjson.encode(code) .. ',"type":' .. cjson.encode(typ)
    .. ',"message":' .. cjson.encode(message) .. ',"traceback":null,"attempt":'
    .. (attempt or '0') .. ',"at":' .. fmt(t) .. '}'
end

local function push_json(k, field, items)
  -- Append JSON items (a comma-separated fragment) to the JSON array held in a hash field.
  local cur = redis.call('HGET', k, field)
  if cur then
    redis.call('HSET', k, field, string.sub(cur, 1, -2) .. ',' .. items .. ']')
  else
    redis.call('HSET', k, field, '[' .. items .. ']')
  end
end

local function record_error(k, err)
  redis.call('HSET', k, 'e', err)
  push_json(k, 'E', err)
end

-- A fenced write (complete, fail, release) may carry a token, unique to the call, which it
-- leaves in the job's 'ak' field with the outcome it wrote ('<token>:<outcome>'). When the
-- reply is lost and the client sends the same call again (redis-py does), the repeat finds the
-- lease gone but its own token there, and answers the outcome instead of "lease not held".

local function acked(k, token)
  -- The outcome the call carrying `token` already wrote to job hash k, or nil.
  if token == nil or token == '' then return nil end
  local ak = redis.call('HGET', k, 'ak')
  local head = token .. ':'
  if ak and string.sub(ak, 1, #head) == head then return string.sub(ak, #head + 1) end
  return nil
end

local function ack(k, token, outcome)
  if token ~= nil and token ~= '' then redis.call('HSET', k, 'ak', token .. ':' .. outcome) end
end

local function complete_job(id, fence, has_result, result, now_arg, token)
  -- running -> completed, fenced; true when it applied (or when this call, by `token`,
  -- already did).
  local k = jkey(id)
  local s, f, q, task = unpack(redis.call('HMGET', k, 's', 'f', 'q', 't'))
  if s ~= 'running' or (f or '0') ~= fence then
    -- A repeat of a completion that took effect (completed under this fence) answers true.
    return acked(k, token) == 'completed'
      or (s == 'completed' and (f or '0') == fence and tonumber(fence) > 0)
  end
  if has_result == '1' then
    redis.call('HSET', k, 's', 'completed', 'fa', fmt(clock(now_arg)), 'r', result)
    redis.call('HDEL', k, 'lo', 'lu')
  else
    redis.call('HSET', k, 's', 'completed', 'fa', fmt(clock(now_arg)))
    redis.call('HDEL', k, 'lo', 'lu', 'r')
  end
  ack(k, token, 'completed')
  redis.call('ZREM', B .. 'lease', id)
  index_remove(id, q, task, 'running')
  index_add(id, q, task, 'completed')
  finished(id)
  return true
end
