#!lua flags=allow-oom
--! claim_lib.lua
-- complete_claim: complete a job (fenced) and claim the next ones, in one round trip.
-- ARGV: id, fence, has_result (1/0), result, token (see ack in lib.lua), then claim's: worker,
--       limit, lease, now, budget, nq, queue..., nt, pattern..., nx, excluded...
-- Returns {completed (1/0), 17 values per claimed job, the DEAD list of claim_lib}.
local done = complete_job(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[9], ARGV[5])
local out = claim_jobs(6)
return {done and 1 or 0, out, DEAD}
