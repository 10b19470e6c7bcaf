-- append_logs: append log entries (a JSON fragment) to an existing job. ARGV: id, entries.
local k = jkey(ARGV[1])
if redis.call('EXISTS', k) == 0 or ARGV[2] == '' then return 0 end
push_json(k, 'L', ARGV[2])
return 1
