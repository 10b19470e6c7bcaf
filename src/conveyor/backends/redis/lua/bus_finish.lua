--! bus_lib.lua
-- bus_finish: record that the delivery run by a job was handled or is dead, and advance its
-- chain. ARGV: job id, status ('handled' or 'dead'), now. Returns 1, or 0 for no delivery /
-- already handled / a repeat.
local where = redis.call('HGET', BDJ, ARGV[1])
if not where then return 0 end
local p, sub = string.match(where, '^(%d+):(.*)$')
local dk = bd_key(p, sub)
local status, chain = unpack(redis.call('HMGET', dk, 's', 'c'))
if not status or status == 'handled' or status == ARGV[2] then return 0 end
local now = fmt(clock(ARGV[3]))
redis.call('HSET', dk, 's', ARGV[2], 'f', now)
bus_leave_chain(p, sub, chain, now)
flush()
return 1
