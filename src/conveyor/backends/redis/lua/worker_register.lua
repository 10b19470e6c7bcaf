-- register_worker: insert or replace a worker's entry. ARGV: id, heartbeat_at, info_json.
redis.call('HSET', B .. 'workers', ARGV[1], ARGV[3])
redis.call('ZADD', B .. 'beats', ARGV[2], ARGV[1])
return 1
