-- load: one queue's load (the autoscaling signals), read atomically.
-- ARGV: queue, now ('' for the store's clock).
-- Returns: ready (queued, plus scheduled jobs already due), running, and the age in seconds of
-- the longest-waiting ready job as text ('' when nothing is ready).
local q = ARGV[1]
local t = clock(ARGV[2])
local ready = redis.call('ZCARD', qkey(q, 'x:queued'))
local running = redis.call('ZCARD', qkey(q, 'x:running'))
local oldest = nil
for _, prio in ipairs(redis.call('ZRANGE', qkey(q, 'p'), 0, -1)) do
  local head = redis.call('ZRANGE', qkey(q, 'r:' .. prio), 0, 0, 'WITHSCORES')
  if head[2] then
    local s = tonumber(head[2])
    if oldest == nil or s < oldest then oldest = s end
  end
end
local sk = qkey(q, 's')
local due = redis.call('ZCOUNT', sk, '-inf', fmt(t))
if due > 0 then
  ready = ready + due
  local head = redis.call('ZRANGE', sk, 0, 0, 'WITHSCORES')
  local s = tonumber(head[2])
  if oldest == nil or s < oldest then oldest = s end
end
local age = ''
if oldest ~= nil then age = fmt(math.max(t - oldest, 0)) end
return {ready, running, age}
