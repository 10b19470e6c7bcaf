-- unregister_worker: remove a worker's entry. ARGV: id.
redis.call('HDEL', B .. 'workers', ARGV[1])
redis.call('ZREM', B .. 'beats', ARGV[1])
return 1
