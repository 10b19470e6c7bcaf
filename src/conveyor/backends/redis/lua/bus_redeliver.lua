--! bus_lib.lua
-- bus_redeliver: deliver stored events again (replay).
-- ARGV: now, force (1/0), then per delivery: event_id subscription chain(opt) + JOB_ARGS.
-- Returns per delivery the id of the job created, or '' when it was skipped.
local t = clock(ARGV[1])
local now = fmt(t)
local force = ARGV[2] == '1'
local out = {}
local i = 3
while i <= #ARGV do
  local ev, sub, chain = ARGV[i], ARGV[i + 1], opt(ARGV[i + 2])
  local payload = bus_payload(ARGV, i + 3)
  local p = redis.call('HGET', BIDS, ev)
  local result = ''
  if p then
    local dk = bd_key(p, sub)
    local status, job, old_chain = unpack(redis.call('HMGET', dk, 's', 'j', 'c'))
    local skip = false
    if status then
      local state = redis.call('HGET', jkey(job), 's')
      local alive = state and not TERMINAL[state]
      skip = (status == 'live' and alive) or (status == 'handled' and not force)
      if not skip then
        bus_leave_chain(p, sub, old_chain, now)
        redis.call('HDEL', BDJ, job)
        redis.call('DEL', dk)
      end
    end
    if not skip then
      bus_add_delivery(p, ev, sub, chain, ARGV, i + 3, payload, t, now)
      result = ARGV[i + 3]
    end
  end
  out[#out + 1] = result
  i = i + 3 + JOB_ARGS
end
bus_flush()
return out
