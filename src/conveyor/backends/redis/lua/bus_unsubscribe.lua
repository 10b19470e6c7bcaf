--! bus_lib.lua
-- bus_unsubscribe: delete a subscription (its deliveries stay). ARGV: name. Returns 1 or 0.
if redis.call('HDEL', BSUB, ARGV[1]) == 0 then return 0 end
redis.call('HINCRBY', BUS, 'ver', 1)
return 1
