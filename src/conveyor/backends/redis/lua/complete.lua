#!lua flags=allow-oom
-- complete: running -> completed, fenced. ARGV: id, fence, has_result (1/0), result, now,
-- token (optional; see ack in lib.lua).
-- Returns 1, or 0 when the lease is not held under that fence.
if not complete_job(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]) then return 0 end
flush()
return 1
