-- snapshot_save: keep a stream's latest snapshot (a lower version never replaces a higher).
-- Keys: B..'ss:'<stream> HASH v state sv t; B..'sstreams' SET of streams with a snapshot.
-- ARGV: stream, version, state, schema_version, now.
local key = B .. 'ss:' .. escape(ARGV[1])
local have = redis.call('HGET', key, 'v')
if have and tonumber(have) > tonumber(ARGV[2]) then return 0 end
redis.call('HSET', key, 'v', ARGV[2], 's', ARGV[3], 'sv', ARGV[4], 't', fmt(clock(ARGV[5])))
redis.call('SADD', B .. 'sstreams', ARGV[1])
return 1
