-- stream_prune: delete events recorded before a time that their stream's snapshot covers.
-- ARGV: before, limit. Returns how many events were deleted.
local before, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local deleted = 0
for _, stream in ipairs(redis.call('SMEMBERS', B .. 'sstreams')) do
  if deleted >= limit then break end
  local covered = redis.call('HGET', B .. 'ss:' .. escape(stream), 'v')
  if covered then
    local key = B .. 'sx:' .. escape(stream)
    local entries = redis.call('XRANGE', key, '-', covered .. '-0', 'COUNT', limit - deleted)
    for _, entry in ipairs(entries) do
      local f = entry[2]
      local fields = {}
      for j = 1, #f, 2 do fields[f[j]] = f[j + 1] end
      if tonumber(fields.t) < before then
        redis.call('XDEL', key, entry[1])
        redis.call('HDEL', B .. 'sids', fields.i)
        deleted = deleted + 1
      end
    end
  end
end
return deleted
