#!lua flags=no-writes
--! select.lua
-- The browse capability's reads (read only). ARGV[1] is the operation:
--   page   cursor desc limit budget filter...  -> id, HGETALL, payload per job (keyset page)
--   oldest                                      -> queue, lowest run-at of its ready jobs, ...
--   tp     since                                -> bucket, HGETALL of its counters, ...
local op = ARGV[1]
local out = {}
if op == 'page' then
  local flt = read_filter(6)
  local start = opt(ARGV[2])
  local desc = ARGV[3] == '1'
  for _, id in ipairs(select_ids(flt, desc, 0, tonumber(ARGV[4]), tonumber(ARGV[5]), start)) do
    out[#out + 1] = id
    local h = redis.call('HGETALL', jkey(id))
    -- Drop the logs field (list pages do not show them).
    local kept = {}
    for j = 1, #h, 2 do
      if h[j] ~= 'L' then kept[#kept + 1] = h[j]; kept[#kept + 1] = h[j + 1] end
    end
    out[#out + 1] = kept
    out[#out + 1] = redis.call('GET', dkey(id))
  end
elseif op == 'oldest' then
  for _, q in ipairs(redis.call('SMEMBERS', B .. 'queues')) do
    local best = nil
    for _, level in ipairs(redis.call('ZRANGE', qkey(q, 'p'), 0, -1)) do
      local head = redis.call('ZRANGE', qkey(q, 'r:' .. level), 0, 0, 'WITHSCORES')
      if head[2] and (best == nil or tonumber(head[2]) < best) then best = tonumber(head[2]) end
    end
    if best ~= nil then out[#out + 1] = q; out[#out + 1] = fmt(best) end
  end
elseif op == 'tp' then
  for _, bucket in ipairs(redis.call('ZRANGE', B .. 'tp', ARGV[2], '+inf', 'BYSCORE')) do
    out[#out + 1] = bucket
    out[#out + 1] = redis.call('HGETALL', B .. 'tp:' .. bucket)
  end
end
return out
