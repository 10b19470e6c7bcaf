#!lua flags=allow-oom
-- complete_many: several fenced completions in one script (a busy worker's completions that
-- piled up while the previous call was in flight; see RedisBackend.complete).
-- ARGV: token (this call's, see ack in lib.lua), then 5 values per job: id, fence,
--       has_result (1/0), result, now.
-- Returns 1 or 0 per job, in order (0: the lease is not held under that fence).
local token = ARGV[1]
local out = {}
for i = 2, #ARGV, 5 do
  out[#out + 1] = complete_job(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], token)
    and 1 or 0
end
flush()
return out
