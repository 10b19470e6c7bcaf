-- set_progress: store the running job's progress, fenced. ARGV: id, fence, progress.
local k = jkey(ARGV[1])
local s, f = unpack(redis.call('HMGET', k, 's', 'f'))
if s ~= 'running' or (f or '0') ~= ARGV[2] then return 0 end
redis.call('HSET', k, 'g', ARGV[3])
return 1
