--! bus_lib.lua
-- bus_subscribe: create or update a subscription. ARGV: name, pattern, spec (canonical JSON),
-- now. Returns changed (1/0), pattern, spec, position, created.
local old = redis.call('HGET', BSUB, ARGV[1])
local rec
if old then
  rec = cjson.decode(old)
  if rec.pattern == ARGV[2] and rec.spec == ARGV[3] then
    return {0, rec.pattern, rec.spec, rec.position, rec.created}
  end
  rec.pattern, rec.spec = ARGV[2], ARGV[3]
else
  rec = {pattern = ARGV[2], spec = ARGV[3], position = redis.call('HGET', BUS, 'pos') or '0',
    created = fmt(clock(ARGV[4]))}
end
redis.call('HSET', BSUB, ARGV[1], cjson.encode(rec))
redis.call('HINCRBY', BUS, 'ver', 1)
return {1, rec.pattern, rec.spec, rec.position, rec.created}
