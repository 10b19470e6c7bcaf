--! select.lua
-- retry_jobs: matching failed/cancelled/expired jobs (oldest id first) back to queued now.
-- ARGV: now, reset_attempts (1/0), limit, budget, filter (states already narrowed).
local t = clock(ARGV[1])
local now = fmt(t)
local flt = read_filter(5)
local ids = select_ids(flt, false, 0, tonumber(ARGV[3]), tonumber(ARGV[4]))
for _, id in ipairs(ids) do
  local k = jkey(id)
  local s, q, task, prio, expires = unpack(redis.call('HMGET', k, 's', 'q', 't', 'p', 'ex'))
  redis.call('HSET', k, 'ra', now)
  if ARGV[2] == '1' then redis.call('HDEL', k, 'a') end
  redis.call('HDEL', k, 'st', 'fa', 'cr', 'cx', 'dl')
  move(id, q, task, s, 'queued')
  make_ready(id, q, prio or '0', now)
  if expires then redis.call('ZADD', B .. 'exp', expires, id) end
  wake(q)
end
flush()
return ids
