--! bus_lib.lua
-- bus_settle: advance every chain whose first delivery's job ended without bus_finish.
-- ARGV: limit, now. Returns how many deliveries were marked.
local limit = tonumber(ARGV[1])
local now = fmt(clock(ARGV[2]))
local marked = 0
for _, ck in ipairs(redis.call('SMEMBERS', BCHAINS)) do
  if marked >= limit then break end
  local sep = string.find(ck, '\0', 1, true)
  marked = marked + bus_advance(string.sub(ck, 1, sep - 1), string.sub(ck, sep + 1), now)
end
flush()
return marked
