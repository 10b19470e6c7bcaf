-- stream_append: append events to an event-sourced stream if it is at the expected version.
-- Keys: B..'sv' HASH stream -> version; B..'sx:'<stream> STREAM entries '<version>-0' with
-- fields i n p h v t; B..'sids' HASH event id -> '<version>:<stream>'.
-- ARGV: stream, expected ('' = any), now, then 5 values per event: id name payload headers
-- schema_version. Returns {appended (1/0), version}.
local stream, expected = ARGV[1], ARGV[2]
local n = (#ARGV - 3) / 5
if n > 0 then
  local where = redis.call('HGET', B .. 'sids', ARGV[4])
  if where then
    local v, s = string.match(where, '^(%d+):(.*)$')
    if s == stream then return {1, tonumber(v) + n - 1} end
  end
end
local current = tonumber(redis.call('HGET', B .. 'sv', stream) or '0')
if expected ~= '' and tonumber(expected) ~= current then return {0, current} end
local now = fmt(clock(ARGV[3]))
local key = B .. 'sx:' .. escape(stream)
for i = 4, #ARGV, 5 do
  current = current + 1
  local v = string.format('%d', current)
  redis.call('XADD', key, v .. '-0', 'i', ARGV[i], 'n', ARGV[i + 1], 'p', ARGV[i + 2],
    'h', ARGV[i + 3], 'v', ARGV[i + 4], 't', now)
  redis.call('HSET', B .. 'sids', ARGV[i], v .. ':' .. stream)
end
if n > 0 then redis.call('HSET', B .. 'sv', stream, string.format('%d', current)) end
return {1, current}
