-- Conveyor SQLite queries, loaded by name (the "-- name:" lines) into
-- conveyor.backends.sqlite.queries.QUERIES. Lists travel as one JSON array parameter read with
-- json_each, so every statement here is static and stays in the statement cache.
-- Filters built from a JobFilter are composed in Python (sqlite_queries.filter_where).

-- name: insert_job
INSERT INTO conveyor_jobs (
    id, task, queue, state, payload, priority, run_at, max_attempts, created_at, timeout,
    expires_at, idempotency_key, concurrency_key, trace_id, metadata, workflow_id, parents,
    payload_version
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: job_state
SELECT state FROM conveyor_jobs WHERE id = ?;

-- name: key_holders
SELECT k.key, j.id, j.state
FROM conveyor_idempotency_keys AS k JOIN conveyor_jobs AS j ON j.id = k.job_id
WHERE k.key IN (SELECT value FROM json_each(?));

-- name: take_key
INSERT OR REPLACE INTO conveyor_idempotency_keys (key, job_id) VALUES (?, ?);

-- name: due_work
-- Two index probes in one statement: is any scheduled job due, has any waiting job expired?
SELECT
    EXISTS (SELECT 1 FROM conveyor_jobs WHERE state = 'scheduled' AND run_at <= :now),
    EXISTS (
        SELECT 1 FROM conveyor_jobs
        WHERE state IN ('queued', 'scheduled') AND expires_at <= :now
    );

-- name: promote_due
UPDATE conveyor_jobs SET state = 'queued' WHERE state = 'scheduled' AND run_at <= ?;

-- name: select_expiring
SELECT id, attempts FROM conveyor_jobs
WHERE state IN ('queued', 'scheduled') AND expires_at <= ?;

-- name: finish_with_error
UPDATE conveyor_jobs
SET state = ?, finished_at = ?, error = ?, error_code = ?, errors = errors || ?
WHERE id = ?;

-- name: claim
-- Queued jobs of one queue in strict order. A job that stalled twice or more (stalls > 1) may be
-- what kills its workers, so a worker holds at most one such job: the claim stops at the
-- first one when the worker holds one already (or took one this call, :held), else at the
-- second.
UPDATE conveyor_jobs
SET state = 'running', attempts = attempts + 1, fence = fence + 1, lease_owner = :owner,
    lease_until = :until, started_at = :now
WHERE rowid IN (
    SELECT rowid FROM (
        SELECT rowid, sum(stalls > 1) OVER win AS suspects
        FROM (
            SELECT rowid, stalls, priority, run_at, id FROM conveyor_jobs
            WHERE state = 'queued' AND queue = :queue
            ORDER BY priority DESC, run_at, id
            LIMIT :limit
        )
        WINDOW win AS (ORDER BY priority DESC, run_at, id)
    )
    WHERE suspects = 0 OR (suspects = 1 AND NOT :held AND NOT EXISTS (
        SELECT 1 FROM conveyor_jobs
        WHERE state = 'running' AND lease_owner = :owner AND stalls > 1))
)
RETURNING id, task, queue, payload, priority, attempts, max_attempts, fence, timeout, trace_id,
    idempotency_key, metadata, payload_version, created_at, stalls, workflow_id, run_at;

-- name: claim_one
-- The same as claim for a limit of 1 (an equality on rowid is cheaper than IN).
UPDATE conveyor_jobs
SET state = 'running', attempts = attempts + 1, fence = fence + 1, lease_owner = :owner,
    lease_until = :until, started_at = :now
WHERE rowid = (
    SELECT rowid FROM (
        SELECT rowid, stalls FROM conveyor_jobs
        WHERE state = 'queued' AND queue = :queue
        ORDER BY priority DESC, run_at, id
        LIMIT 1
    )
    WHERE stalls <= 1 OR (NOT :held AND NOT EXISTS (
        SELECT 1 FROM conveyor_jobs
        WHERE state = 'running' AND lease_owner = :owner AND stalls > 1))
)
RETURNING id, task, queue, payload, priority, attempts, max_attempts, fence, timeout, trace_id,
    idempotency_key, metadata, payload_version, created_at, stalls, workflow_id, run_at;

-- name: claim_filtered
UPDATE conveyor_jobs
SET state = 'running', attempts = attempts + 1, fence = fence + 1, lease_owner = :owner,
    lease_until = :until, started_at = :now
WHERE rowid IN (
    SELECT rowid FROM (
        SELECT rowid, sum(stalls > 1) OVER win AS suspects
        FROM (
            SELECT rowid, stalls, priority, run_at, id FROM conveyor_jobs
            WHERE state = 'queued' AND queue = :queue
              AND (:patterns IS NULL OR EXISTS (
                  SELECT 1 FROM json_each(:patterns) AS p WHERE conveyor_jobs.task GLOB p.value))
              AND task NOT IN (SELECT value FROM json_each(:exclude))
            ORDER BY priority DESC, run_at, id
            LIMIT :limit
        )
        WINDOW win AS (ORDER BY priority DESC, run_at, id)
    )
    WHERE suspects = 0 OR (suspects = 1 AND NOT :held AND NOT EXISTS (
        SELECT 1 FROM conveyor_jobs
        WHERE state = 'running' AND lease_owner = :owner AND stalls > 1))
)
RETURNING id, task, queue, payload, priority, attempts, max_attempts, fence, timeout, trace_id,
    idempotency_key, metadata, payload_version, created_at, stalls, workflow_id, run_at;

-- name: claim_blocked
-- After a claim took fewer jobs than asked: is the queue's next job one that stalled before?
-- Then the claim stopped at it, and later queues wait too.
SELECT EXISTS (
    SELECT 1 FROM (
        SELECT stalls FROM conveyor_jobs
        WHERE state = 'queued' AND queue = :queue
          AND (:patterns IS NULL OR EXISTS (
              SELECT 1 FROM json_each(:patterns) AS p WHERE conveyor_jobs.task GLOB p.value))
          AND task NOT IN (SELECT value FROM json_each(:exclude))
        ORDER BY priority DESC, run_at, id
        LIMIT 1
    )
    WHERE stalls > 1
);

-- name: fail_unreadable
-- A job just claimed whose stored record cannot be decoded: dead-lettered at once.
UPDATE conveyor_jobs
SET state = 'failed', finished_at = :now, error = :error, error_code = :code,
    errors = errors || :line, lease_owner = NULL, lease_until = NULL
WHERE id = :id AND state = 'running';

-- name: complete
UPDATE conveyor_jobs
SET state = 'completed', result = ?, finished_at = ?, lease_owner = NULL, lease_until = NULL
WHERE id = ? AND state = 'running' AND fence = ?;

-- name: fail_terminal
UPDATE conveyor_jobs
SET state = :state, finished_at = :now, dead_letter_queue = :dlq, error = :error,
    error_code = :code, errors = errors || :line, lease_owner = NULL, lease_until = NULL
WHERE id = :id AND state = 'running' AND fence = :fence
RETURNING queue;

-- name: fail_retry
UPDATE conveyor_jobs
SET state = :state, run_at = :run_at, error = :error, error_code = :code,
    errors = errors || :line, lease_owner = NULL, lease_until = NULL
WHERE id = :id AND state = 'running' AND fence = :fence
RETURNING queue;

-- name: release
UPDATE conveyor_jobs
SET state = 'queued', attempts = max(attempts - 1, 0), lease_owner = NULL, lease_until = NULL
WHERE id = ? AND state = 'running' AND fence = ?
RETURNING queue;

-- name: heartbeat
UPDATE conveyor_jobs SET lease_until = :until
FROM (
    SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS fence
    FROM json_each(:leases)
) AS held
WHERE conveyor_jobs.id = held.id AND conveyor_jobs.fence = held.fence
  AND conveyor_jobs.state = 'running'
RETURNING conveyor_jobs.id, conveyor_jobs.fence, conveyor_jobs.cancel_requested;

-- name: select_lease_expired
SELECT id, attempts, stalls, cancel_requested, cancel_reason FROM conveyor_jobs
WHERE state = 'running' AND lease_until < ?
ORDER BY lease_until, id
LIMIT ?;

-- name: recover_requeue
UPDATE conveyor_jobs
SET state = 'queued', stalls = ?, lease_owner = NULL, lease_until = NULL
WHERE id = ?
RETURNING task, queue, attempts;

-- name: recover_finish
UPDATE conveyor_jobs
SET state = ?, finished_at = ?, error = ?, error_code = ?, errors = errors || ?, stalls = ?,
    lease_owner = NULL, lease_until = NULL
WHERE id = ?
RETURNING task, queue, attempts;

-- name: set_progress
UPDATE conveyor_jobs SET progress = ? WHERE id = ? AND state = 'running' AND fence = ?;

-- name: append_logs
UPDATE conveyor_jobs SET logs = logs || ? WHERE id = ?;

-- name: cancel_lookup
SELECT state, attempts, queue FROM conveyor_jobs WHERE id = ?;

-- name: cancel_waiting
UPDATE conveyor_jobs
SET state = 'cancelled', finished_at = ?, cancel_reason = ?, error = ?, error_code = ?,
    errors = errors || ?
WHERE id = ?;

-- name: cancel_request
UPDATE conveyor_jobs SET cancel_requested = 1, cancel_reason = ? WHERE id = ?;

-- name: key_holder
SELECT j.id, j.state
FROM conveyor_idempotency_keys AS k JOIN conveyor_jobs AS j ON j.id = k.job_id
WHERE k.key = ?;

-- name: retry_one
-- Without a reset, a job whose attempts are used up gets one more run, and says so.
UPDATE conveyor_jobs
SET state = 'queued', run_at = :now,
    attempts = CASE WHEN :reset THEN 0 ELSE attempts END,
    max_attempts = CASE WHEN :reset THEN max_attempts ELSE max(max_attempts, attempts + 1) END,
    stalls = 0, finished_at = NULL, cancel_requested = 0, cancel_reason = NULL,
    dead_letter_queue = NULL
WHERE id = :id;

-- name: delete_one
DELETE FROM conveyor_jobs WHERE id = ?;

-- name: release_key
DELETE FROM conveyor_idempotency_keys WHERE key = ? AND job_id = ?;

-- name: waiting_ready
SELECT 1 FROM conveyor_jobs
WHERE state = 'queued' AND queue IN (SELECT value FROM json_each(?))
LIMIT 1;

-- name: waiting_next_due
SELECT run_at FROM conveyor_jobs
WHERE state = 'scheduled' AND queue IN (SELECT value FROM json_each(?))
ORDER BY run_at
LIMIT 1;

-- name: existing_among
SELECT id, state FROM conveyor_jobs WHERE id IN (SELECT value FROM json_each(?));

-- name: count_jobs
SELECT queue, task, state, count(*) FROM conveyor_jobs GROUP BY queue, task, state;

-- name: register_worker
INSERT OR REPLACE INTO conveyor_workers
    (id, host, pid, started_at, heartbeat_at, queues, concurrency, stats)
VALUES (?, ?, ?, ?, ?, ?, ?, ?);

-- name: unregister_worker
DELETE FROM conveyor_workers WHERE id = ?;

-- name: list_workers
SELECT id, host, pid, started_at, heartbeat_at, queues, concurrency, stats
FROM conveyor_workers ORDER BY id;

-- name: prune_workers
DELETE FROM conveyor_workers WHERE heartbeat_at < ?;
