--! bus_lib.lua
-- bus_prune: delete events stored before a time none of whose deliveries is live, with their
-- deliveries. ARGV: before, limit. Looks at no more than 10 * limit of the oldest events.
-- Returns how many were deleted.
local before, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local deleted = 0
local entries = redis.call('XRANGE', BLOG, '-', '+', 'COUNT', limit * 10)
for _, entry in ipairs(entries) do
  if deleted >= limit then break end
  local sid, f = entry[1], entry[2]
  local fields = {}
  for j = 1, #f, 2 do fields[f[j]] = f[j + 1] end
  if tonumber(fields.s) < before then
    local p = string.match(sid, '^(%d+)')
    local subs = redis.call('ZRANGE', bdl_key(p), 0, -1)
    local live = false
    for _, sub in ipairs(subs) do
      if redis.call('HGET', bd_key(p, sub), 's') == 'live' then live = true; break end
    end
    if not live then
      for _, sub in ipairs(subs) do
        local dk = bd_key(p, sub)
        local job = redis.call('HGET', dk, 'j')
        if job then redis.call('HDEL', BDJ, job) end
        redis.call('DEL', dk)
        redis.call('ZREM', bds_key(sub), p)
      end
      redis.call('DEL', bdl_key(p))
      redis.call('ZREM', BDP, p)
      redis.call('HDEL', BIDS, fields.i)
      redis.call('XDEL', BLOG, sid)
      deleted = deleted + 1
    end
  end
end
return deleted
