#!lua flags=allow-oom
--! claim_lib.lua
-- claim: promote due scheduled jobs and expire stale waiting ones (every queue), then lease
-- up to `limit` queued jobs of the given queues in precedence order and, within a queue, in
-- (priority desc, run-at asc, id asc) order, skipping tasks the worker does not take.
-- ARGV: worker, limit, lease, now, budget, nq, queue..., nt (-1: all tasks), pattern...,
--       nx, excluded...
-- Returns {17 values per claimed job (see codec.decode_claimed), the DEAD list of claim_lib}.
local out = claim_jobs(1)
return {out, DEAD}
