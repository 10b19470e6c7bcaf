--! bus_lib.lua
-- bus_publish: store events and their deliveries (with their jobs) atomically.
-- ARGV: now, version, number of events, then 8 values per event:
--   id name payload key(opt) priority headers schema_version occurred_at('' = now)
-- then the number of deliveries and per delivery: event_id subscription chain(opt) and the
-- JOB_ARGS values of its job.
-- Returns -1 when the subscription set is not at `version` (nothing stored), else per event:
-- id, position, created (1/0).
local t = clock(ARGV[1])
local now = fmt(t)
if (redis.call('HGET', BUS, 'ver') or '0') ~= ARGV[2] then return -1 end
local pos = tonumber(redis.call('HGET', BUS, 'pos') or '0')
local start = pos
local out, created = {}, {}
local i = 4
for _ = 1, tonumber(ARGV[3]) do
  local id = ARGV[i]
  local known = created[id] or redis.call('HGET', BIDS, id)
  if known then
    out[#out + 1] = id; out[#out + 1] = known; out[#out + 1] = 0
  else
    pos = pos + 1
    local p = pos_str(pos)
    local occurred = ARGV[i + 7]
    if occurred == '' then occurred = now end
    local fields = {'i', id, 'n', ARGV[i + 1], 'p', ARGV[i + 2], 'pr', ARGV[i + 4],
      'h', ARGV[i + 5], 'v', ARGV[i + 6], 'o', occurred, 's', now}
    local key = opt(ARGV[i + 3])
    if key then fields[#fields + 1] = 'k'; fields[#fields + 1] = key end
    redis.call('XADD', BLOG, p .. '-0', unpack(fields))
    later(HSETS, BIDS, id, p)
    created[id] = p
    out[#out + 1] = id; out[#out + 1] = p; out[#out + 1] = 1
  end
  i = i + 8
end
if pos ~= start then redis.call('HSET', BUS, 'pos', pos_str(pos)) end
local n = tonumber(ARGV[i])
i = i + 1
for _ = 1, n do
  local ev, sub, chain = ARGV[i], ARGV[i + 1], opt(ARGV[i + 2])
  local payload = bus_payload(ARGV, i + 3)
  local p = created[ev]
  if p and redis.call('EXISTS', bd_key(p, sub)) == 0 then
    bus_add_delivery(p, ev, sub, chain, ARGV, i + 3, payload, t, now)
  end
  i = i + 3 + JOB_ARGS
end
bus_flush()
return out
