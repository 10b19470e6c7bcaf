-- peek (wait_for_jobs): '0' when one of the queues has a ready or due job, else the seconds
-- until the earliest scheduled job of those queues, or '' when there is none. ARGV: queue...
-- When nothing is ready, the queues' wake-up markers are deleted: a marker still present was
-- pushed while no worker was blocked on it, and this caller has just seen what it announced.
local t = clock('')
local next_due = nil
for _, q in ipairs(ARGV) do
  if redis.call('EXISTS', qkey(q, 'p')) == 1 then return '0' end
  local head = redis.call('ZRANGE', qkey(q, 's'), 0, 0, 'WITHSCORES')
  if head[1] then
    local due = tonumber(head[2])
    if next_due == nil or due < next_due then next_due = due end
  end
end
for _, q in ipairs(ARGV) do redis.call('DEL', qkey(q, 'm')) end
if next_due == nil then return '' end
return fmt(math.max(next_due - t, 0))
