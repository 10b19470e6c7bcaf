#!lua flags=allow-oom
-- heartbeat: extend every lease still held to now + lease. ARGV: now, lease, (id, fence)...
-- Returns held (1/0) and cancel_requested (1/0) for each lease, in order.
local t = clock(ARGV[1])
local lease_until = fmt(t + tonumber(ARGV[2]))
local out = {}
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local k = jkey(id)
  local s, f, cr = unpack(redis.call('HMGET', k, 's', 'f', 'cr'))
  if s == 'running' and (f or '0') == ARGV[i + 1] then
    redis.call('HSET', k, 'lu', lease_until)
    redis.call('ZADD', B .. 'lease', lease_until, id)
    out[#out + 1] = 1
    out[#out + 1] = cr and 1 or 0
  else
    out[#out + 1] = 0
    out[#out + 1] = 0
  end
end
return out
