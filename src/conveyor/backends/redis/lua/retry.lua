--! select.lua
-- retry_jobs: matching failed/cancelled/expired jobs (oldest id first) back to queued now.
-- ARGV: now, reset_attempts (1/0), limit, budget, filter (states already narrowed).
-- One live holder per idempotency key: a job whose key another job holds (or a job retried
-- earlier in this call took) is left alone and reported with the holder's id.
-- Returns {retried ids, {refused id, holder id, ...}}.
local t = clock(ARGV[1])
local now = fmt(t)
local flt = read_filter(5)
local taken, refused = {}, {}

local function eligible(id)
  local ikey = redis.call('HGET', jkey(id), 'ik')
  if not ikey then return true end
  local holder = taken[ikey]
  if not holder then
    holder = redis.call('HGET', B .. 'idem', ikey)
    if holder then
      local state = redis.call('HGET', jkey(holder), 's')
      if not (state and HOLDING[state]) then holder = nil end
    end
  end
  if holder and holder ~= id then
    refused[#refused + 1] = id
    refused[#refused + 1] = holder
    return false
  end
  taken[ikey] = id
  return true
end

local ids = select_ids(flt, false, 0, tonumber(ARGV[3]), tonumber(ARGV[4]), nil, eligible)
for _, id in ipairs(ids) do
  local k = jkey(id)
  local s, q, task, prio, expires, ikey, a, ma = unpack(redis.call('HMGET', k,
    's', 'q', 't', 'p', 'ex', 'ik', 'a', 'ma'))
  redis.call('HSET', k, 'ra', now)
  if ARGV[2] == '1' then
    redis.call('HDEL', k, 'a')
  else
    -- One more run without a reset: max_attempts says so (never "4/3").
    local more = (tonumber(a or '0') or 0) + 1
    if more > (tonumber(ma or '1') or 1) then redis.call('HSET', k, 'ma', more) end
  end
  redis.call('HDEL', k, 'st', 'fa', 'cr', 'cx', 'dl')
  if ikey then redis.call('HSET', B .. 'idem', ikey, id) end
  move(id, q, task, s, 'queued')
  make_ready(id, q, prio or '0', now)
  if expires then redis.call('ZADD', B .. 'exp', expires, id) end
  wake(q)
end
flush()
return {ids, refused}
