#!lua flags=no-writes
-- get_job: the job hash and its payload (read only). ARGV: id. Returns {HGETALL, payload}.
return {redis.call('HGETALL', jkey(ARGV[1])), redis.call('GET', dkey(ARGV[1]))}
