-- The statements of the PostgreSQL backend, one per `-- name:` section.
--
-- Batch updates name their rows as `id = ANY (ARRAY(SELECT id FROM cte))`: an uncorrelated
-- array the planner turns into a primary-key index scan whatever it guesses about the CTE's
-- size (a join could become a hash join over the whole table).
--
-- Placeholders: `{schema}` is the quoted schema name; `{now}` is the caller's clock when
-- `%(now)s` is given, else the server's (constant within one statement); `{holding}` is the
-- list of states that hold an idempotency key; `{filter}` (only where used) is a JobFilter
-- predicate over the alias `j`. Parameters use psycopg's `%(name)s` style, so a literal
-- percent sign is written `%%`. Notifications are sent with pg_notify and delivered at
-- commit; a NULL channel parameter means "do not notify". Enqueue notifies the queues in
-- `notify` unconditionally and those in `notify_idle` (the client's rate limit said no) only
-- when no job has waited there for more than 50 ms: then a worker may be idle, and waking it
-- now instead of at the trailing notification is what keeps enqueue-to-start latency low; a
-- queue with a backlog has no idle worker to wake. (A younger queued job does not count: a
-- worker may be claiming it right now, and then go back to waiting without seeing ours.)

-- name: enqueue_lock_keys
-- Lock the batch's idempotency keys (in key order, so two batches cannot deadlock) until the
-- transaction ends; the insert that follows then sees every holder committed before.
INSERT INTO {schema}.idempotency_keys AS k (key)
SELECT DISTINCT key FROM unnest(%(keys)s::text[]) AS key WHERE key IS NOT NULL ORDER BY key
ON CONFLICT (key) DO UPDATE SET key = EXCLUDED.key

-- name: enqueue
-- Insert a batch without idempotency keys, in input order; a row whose id exists is skipped
-- (the caller resolves it). Notifies the given queues if anything was stored. The arrays come
-- in binary (much cheaper for the client to encode than array text); metadata and parents are
-- JSON text (NULL: none).
WITH ins AS (
    INSERT INTO {schema}.jobs (
        id, task, queue, state, payload, priority, run_at, max_attempts, timeout, expires_at,
        idempotency_key, concurrency_key, trace_id, metadata, workflow_id, parents,
        payload_version, created_at
    )
    SELECT
        n.id, n.task, n.queue,
        CASE
            WHEN n.blocked THEN 'blocked'
            WHEN coalesce(n.run_at, c.now + n.delay, c.now) > c.now THEN 'scheduled'
            ELSE 'queued'
        END,
        n.payload, n.priority, coalesce(n.run_at, c.now + n.delay, c.now), n.max_attempts,
        n.timeout,
        n.expires_at, n.idempotency_key, n.concurrency_key, n.trace_id,
        coalesce(n.metadata, '{}'::json), n.workflow_id,
        CASE WHEN n.parents IS NULL THEN '{}'::text[]
            ELSE ARRAY(SELECT jsonb_array_elements_text(n.parents)) END,
        n.payload_version, c.now
    FROM unnest(
        %(ids)b::text[], %(tasks)b::text[], %(queues)b::text[], %(payloads)b::bytea[],
        %(priorities)b::int[], %(run_ats)b::float8[], %(max_attempts)b::int[],
        %(timeouts)b::float8[], %(expires)b::float8[], %(keys)b::text[],
        %(ckeys)b::text[], %(traces)b::text[], %(metas)b::text[]::json[],
        %(workflows)b::text[], %(parents)b::text[]::jsonb[], %(versions)b::int[],
        %(blocked)b::bool[], %(delays)b::float8[]
    ) WITH ORDINALITY AS n (
        id, task, queue, payload, priority, run_at, max_attempts, timeout, expires_at,
        idempotency_key, concurrency_key, trace_id, metadata, workflow_id, parents,
        payload_version, blocked, delay, ord
    ),
    (SELECT {now} AS now) AS c
    ORDER BY n.ord
    ON CONFLICT (id) DO NOTHING
    RETURNING id, state
)
SELECT
    ins.id,
    ins.state,
    (SELECT count(pg_notify(%(channel)s, q)) FROM unnest(%(notify)s::text[]) AS q),
    (SELECT count(pg_notify(%(channel)s, q)) FROM unnest(%(notify_idle)s::text[]) AS q
     WHERE NOT EXISTS (
         SELECT 1 FROM {schema}.jobs w
         WHERE w.state = 'queued' AND w.queue = q AND w.run_at < {now} - 0.05))
FROM ins

-- name: enqueue_one
-- One job, with scalar parameters (cheaper to send than a batch of arrays). Skipped when its
-- id exists or, with an idempotency key (locked first), when a job holds the key.
WITH c AS (SELECT {now} AS now),
ins AS (
    INSERT INTO {schema}.jobs (
        id, task, queue, state, payload, priority, run_at, max_attempts, timeout, expires_at,
        idempotency_key, concurrency_key, trace_id, metadata, workflow_id, parents,
        payload_version, created_at
    )
    SELECT
        %(id)s::text, %(task)s::text, %(queue)s::text,
        CASE
            WHEN %(blocked)s::bool THEN 'blocked'
            WHEN coalesce(%(run_at)s::float8, c.now + %(delay)s::float8, c.now) > c.now
                THEN 'scheduled'
            ELSE 'queued'
        END,
        %(payload)b::bytea, %(priority)s::int,
        coalesce(%(run_at)s::float8, c.now + %(delay)s::float8, c.now),
        %(max_attempts)s::int, %(timeout)s::float8, %(expires)s::float8, %(key)s::text,
        %(ckey)s::text, %(trace)s::text, %(meta)s::json, %(workflow)s::text,
        %(parents)s::text[], %(version)s::int, c.now
    FROM c
    WHERE %(key)s::text IS NULL OR NOT EXISTS (
        SELECT 1 FROM {schema}.jobs h
        WHERE h.idempotency_key = %(key)s::text AND h.state IN ({holding}))
    ON CONFLICT (id) DO NOTHING
    RETURNING id, state
)
SELECT id, state,
    CASE WHEN %(channel)s::text IS NOT NULL AND (NOT %(if_idle)s::bool OR NOT EXISTS (
            SELECT 1 FROM {schema}.jobs w
            WHERE w.state = 'queued' AND w.queue = %(queue)s::text
              AND w.run_at < (SELECT now FROM c) - 0.05))
        THEN pg_notify(%(channel)s, %(queue)s) END
FROM ins

-- name: enqueue_keyed
-- Like `enqueue`, for a batch with idempotency keys (run after `enqueue_lock_keys` in the
-- same transaction). A row is also skipped when a job in a key-holding state has its key
-- (one index probe per row), or when an earlier row of the batch has the same key.
WITH input AS MATERIALIZED (
    SELECT n.*,
        row_number() OVER (PARTITION BY n.idempotency_key ORDER BY n.ord) AS key_rank
    FROM unnest(
        %(ids)b::text[], %(tasks)b::text[], %(queues)b::text[], %(payloads)b::bytea[],
        %(priorities)b::int[], %(run_ats)b::float8[], %(max_attempts)b::int[],
        %(timeouts)b::float8[], %(expires)b::float8[], %(keys)b::text[],
        %(ckeys)b::text[], %(traces)b::text[], %(metas)b::text[]::json[],
        %(workflows)b::text[], %(parents)b::text[]::jsonb[], %(versions)b::int[],
        %(blocked)b::bool[], %(delays)b::float8[]
    ) WITH ORDINALITY AS n (
        id, task, queue, payload, priority, run_at, max_attempts, timeout, expires_at,
        idempotency_key, concurrency_key, trace_id, metadata, workflow_id, parents,
        payload_version, blocked, delay, ord
    )
),
ins AS (
    INSERT INTO {schema}.jobs (
        id, task, queue, state, payload, priority, run_at, max_attempts, timeout, expires_at,
        idempotency_key, concurrency_key, trace_id, metadata, workflow_id, parents,
        payload_version, created_at
    )
    SELECT
        n.id, n.task, n.queue,
        CASE
            WHEN n.blocked THEN 'blocked'
            WHEN coalesce(n.run_at, c.now + n.delay, c.now) > c.now THEN 'scheduled'
            ELSE 'queued'
        END,
        n.payload, n.priority, coalesce(n.run_at, c.now + n.delay, c.now), n.max_attempts,
        n.timeout,
        n.expires_at, n.idempotency_key, n.concurrency_key, n.trace_id,
        coalesce(n.metadata, '{}'::json), n.workflow_id,
        CASE WHEN n.parents IS NULL THEN '{}'::text[]
            ELSE ARRAY(SELECT jsonb_array_elements_text(n.parents)) END,
        n.payload_version, c.now
    FROM input n
    CROSS JOIN (SELECT {now} AS now) AS c
    LEFT JOIN LATERAL (
        SELECT true AS held FROM {schema}.jobs h
        WHERE h.idempotency_key = n.idempotency_key AND h.state IN ({holding})
        LIMIT 1
    ) AS k ON n.idempotency_key IS NOT NULL
    WHERE n.idempotency_key IS NULL OR (n.key_rank = 1 AND k.held IS NULL)
    ORDER BY n.ord
    ON CONFLICT (id) DO NOTHING
    RETURNING id, state
)
SELECT
    ins.id,
    ins.state,
    (SELECT count(pg_notify(%(channel)s, q)) FROM unnest(%(notify)s::text[]) AS q),
    (SELECT count(pg_notify(%(channel)s, q)) FROM unnest(%(notify_idle)s::text[]) AS q
     WHERE NOT EXISTS (
         SELECT 1 FROM {schema}.jobs w
         WHERE w.state = 'queued' AND w.queue = q AND w.run_at < {now} - 0.05))
FROM ins

-- name: enqueue_resolve
-- For batch rows that were not inserted: the job holding the key, else the job with the id.
SELECT n.ord, coalesce(k.id, j.id), coalesce(k.state, j.state)
FROM unnest(%(ids)s::text[], %(keys)s::text[]) WITH ORDINALITY AS n (id, key, ord)
LEFT JOIN LATERAL (
    SELECT h.id, h.state FROM {schema}.jobs h
    WHERE n.key IS NOT NULL AND h.idempotency_key = n.key AND h.state IN ({holding})
    LIMIT 1
) AS k ON true
LEFT JOIN {schema}.jobs j ON j.id = n.id
ORDER BY n.ord

-- name: stage
-- The first half of a claim: expire waiting jobs whose TTL passed, then promote due scheduled
-- jobs (the two sets are disjoint, so one statement does both). SKIP LOCKED: a row another
-- claimer is staging right now is theirs to stage.
WITH clock AS (SELECT {now} AS now),
doomed AS MATERIALIZED (
    SELECT j.id FROM {schema}.jobs j
    WHERE j.state IN ('queued', 'scheduled')
      AND j.expires_at IS NOT NULL AND j.expires_at <= (SELECT now FROM clock)
    ORDER BY j.expires_at
    LIMIT 1000
    FOR UPDATE SKIP LOCKED
),
expired AS (
    UPDATE {schema}.jobs j
    SET state = 'expired',
        finished_at = c.now,
        error = jsonb_build_object(
            'code', 'expired', 'type', 'Expired',
            'message', 'the job''s TTL passed before it started',
            'traceback', NULL, 'attempt', j.attempts, 'at', c.now),
        errors = j.errors || jsonb_build_array(jsonb_build_object(
            'code', 'expired', 'type', 'Expired',
            'message', 'the job''s TTL passed before it started',
            'traceback', NULL, 'attempt', j.attempts, 'at', c.now))
    FROM clock c
    WHERE j.id = ANY (ARRAY(SELECT id FROM doomed))
    RETURNING j.id
),
due AS MATERIALIZED (
    SELECT j.id FROM {schema}.jobs j
    WHERE j.state = 'scheduled' AND j.run_at <= (SELECT now FROM clock)
      AND (j.expires_at IS NULL OR j.expires_at > (SELECT now FROM clock))
    ORDER BY j.run_at
    LIMIT 5000
    FOR UPDATE SKIP LOCKED
),
promoted AS (
    UPDATE {schema}.jobs j SET state = 'queued'
    WHERE j.id = ANY (ARRAY(SELECT id FROM due))
    RETURNING j.id
)
SELECT (SELECT count(*) FROM expired), (SELECT count(*) FROM promoted)

-- name: claim
-- Lease up to %(limit)s queued jobs: per queue an index range scan in (priority desc, run_at,
-- id) order with SKIP LOCKED, queues in precedence order. MATERIALIZED keeps the planner from
-- re-running the locking subquery per updated row. A job that stalled twice or more (stalls > 1) may
-- be what kills its workers, so a worker holds at most one such job: the claim stops at the
-- first one when the worker holds one already, else at the second (as MemoryBackend.claim).
WITH clock AS (SELECT {now} AS now),
picked AS MATERIALIZED (
    SELECT c.id, q.ord, c.priority, c.run_at, c.stalls, c.readable
    FROM unnest(%(queues)s::text[]) WITH ORDINALITY AS q (name, ord)
    CROSS JOIN LATERAL (
        SELECT j.id, j.priority, j.run_at, j.stalls,
            json_typeof(j.metadata) IN ('object', 'null') AS readable
        FROM {schema}.jobs j
        WHERE j.state = 'queued'
          AND j.queue = q.name
          AND (j.expires_at IS NULL OR j.expires_at > (SELECT now FROM clock))
          AND (%(patterns)s::text[] IS NULL OR j.task LIKE ANY (%(patterns)s::text[]))
          AND NOT (j.task = ANY (%(exclude)s::text[]))
        ORDER BY j.priority DESC, j.run_at, j.id
        LIMIT %(limit)s
        FOR UPDATE OF j SKIP LOCKED
    ) AS c
    ORDER BY q.ord, c.priority DESC, c.run_at, c.id
    LIMIT %(limit)s
),
ranked AS (
    SELECT p.id, p.ord, p.readable, sum((p.stalls > 1)::int) OVER (
        ORDER BY p.ord, p.priority DESC, p.run_at, p.id) AS suspects
    FROM picked p
),
taken AS (
    SELECT r.id, r.ord, r.readable FROM ranked r
    WHERE r.suspects = 0 OR (r.suspects = 1 AND NOT EXISTS (
        SELECT 1 FROM {schema}.jobs h
        WHERE h.state = 'running' AND h.lease_owner = %(worker)s AND h.stalls > 1))
),
unreadable AS (
    SELECT jsonb_build_object(
        'code', 'invalid_payload', 'type', 'InvalidPayload',
        'message', 'the stored job record cannot be decoded: metadata is not a JSON object',
        'traceback', NULL) AS error
),
upd AS (
    UPDATE {schema}.jobs j
    SET state = CASE WHEN p.readable THEN 'running' ELSE 'failed' END,
        attempts = j.attempts + 1,
        fence = j.fence + 1,
        lease_owner = CASE WHEN p.readable THEN %(worker)s END,
        lease_until = CASE WHEN p.readable THEN c.now + %(lease)s::float8 END,
        started_at = c.now,
        finished_at = CASE WHEN p.readable THEN j.finished_at ELSE c.now END,
        error = CASE WHEN p.readable THEN j.error
            ELSE u.error || jsonb_build_object('attempt', j.attempts + 1, 'at', c.now) END,
        errors = CASE WHEN p.readable THEN j.errors
            ELSE j.errors || jsonb_build_array(
                u.error || jsonb_build_object('attempt', j.attempts + 1, 'at', c.now)) END
    FROM taken p, clock c, unreadable u
    WHERE j.id = p.id
    RETURNING p.ord, j.id, j.task, j.queue, j.payload, j.priority, j.attempts, j.max_attempts,
        j.fence, j.lease_until, j.timeout, j.trace_id, j.idempotency_key, j.metadata,
        j.payload_version, j.created_at, j.stalls, j.workflow_id, j.run_at, j.state
)
-- A job whose stored metadata is not a JSON object cannot be handed to a worker: it is
-- dead-lettered (invalid_payload) in this transition, and the rest of the batch runs. Its row
-- comes back too (state 'failed'), so the worker can log and count it.
SELECT ord, id, task, queue, payload, priority, attempts, max_attempts, fence, lease_until,
    timeout, trace_id, idempotency_key, metadata, payload_version, created_at, stalls,
    workflow_id, run_at, state
FROM upd

-- name: complete
-- With %(repeat)s, a repeat of a completion that took effect (the job completed under this
-- fence) answers its id again (the plain SELECT sees the rows as they were before the UPDATE,
-- so a row completed now is not counted twice). The caller's own transaction passes false.
WITH upd AS (
    UPDATE {schema}.jobs
    SET state = 'completed', result = %(result)s, finished_at = {now},
        lease_owner = NULL, lease_until = NULL
    WHERE id = %(id)s AND fence = %(fence)s AND state = 'running'
    RETURNING id
)
SELECT id, CASE WHEN %(channel)s::text IS NOT NULL THEN pg_notify(%(channel)s, id) END
FROM upd
UNION ALL
SELECT id, NULL FROM {schema}.jobs
WHERE %(repeat)s::bool AND id = %(id)s AND fence = %(fence)s AND fence > 0
  AND state = 'completed'

-- name: complete_batch
-- Several fenced completions in one statement (concurrent complete() calls of one client);
-- returns the ids that were completed. Each row brings its own `now` (NULL: server clock).
WITH input AS (
    SELECT * FROM unnest(
        %(ids)s::text[], %(fences)s::bigint[], %(results)b::bytea[], %(nows)s::float8[]
    ) AS i (id, fence, result, now)
),
upd AS (
    UPDATE {schema}.jobs j
    SET state = 'completed', result = i.result,
        finished_at = coalesce(i.now, extract(epoch FROM statement_timestamp())::float8),
        lease_owner = NULL, lease_until = NULL
    FROM input i
    WHERE j.id = i.id AND j.fence = i.fence AND j.state = 'running'
    RETURNING j.id
)
SELECT id FROM upd
UNION ALL
-- repeats of completions that took effect (see `complete`)
SELECT j.id FROM {schema}.jobs j JOIN input i ON j.id = i.id AND j.fence = i.fence
WHERE j.state = 'completed' AND j.fence > 0
UNION ALL
SELECT NULL FROM (
    SELECT pg_notify(%(channel)s, '')
    WHERE %(channel)s::text IS NOT NULL AND EXISTS (SELECT 1 FROM upd)
) AS n

-- name: fail
-- delay NULL: to the terminal state; delay <= 0: queued now; else scheduled after delay.
-- Notifies %(jobs_channel)s (payload: queue) on a retry, %(done_channel)s (payload: id) when
-- terminal.
WITH clock AS (SELECT {now} AS now),
upd AS (
    UPDATE {schema}.jobs j
    SET state = CASE
            WHEN %(delay)s::float8 IS NULL THEN %(terminal)s::text
            WHEN %(delay)s::float8 <= 0 THEN 'queued'
            ELSE 'scheduled'
        END,
        run_at = CASE
            WHEN %(delay)s::float8 IS NULL THEN j.run_at
            ELSE c.now + greatest(%(delay)s::float8, 0)
        END,
        finished_at = CASE WHEN %(delay)s::float8 IS NULL THEN c.now ELSE j.finished_at END,
        dead_letter_queue = CASE
            WHEN %(delay)s::float8 IS NULL AND %(terminal)s::text = 'failed' THEN %(dlq)s::text
            WHEN %(delay)s::float8 IS NULL THEN NULL
            ELSE j.dead_letter_queue
        END,
        error = %(error)s::jsonb,
        errors = j.errors || jsonb_build_array(%(error)s::jsonb),
        lease_owner = NULL,
        lease_until = NULL
    FROM clock c
    WHERE j.id = %(id)s AND j.fence = %(fence)s AND j.state = 'running'
    RETURNING j.id, j.state, j.queue
)
SELECT state,
    CASE
        WHEN state IN ('queued', 'scheduled') AND %(jobs_channel)s::text IS NOT NULL
            THEN pg_notify(%(jobs_channel)s, queue)
        WHEN state NOT IN ('queued', 'scheduled') AND %(done_channel)s::text IS NOT NULL
            THEN pg_notify(%(done_channel)s, id)
    END
FROM upd
UNION ALL
-- A repeat of this failure that took effect (same fence, this error stored last, the job in a
-- state it leads to, not held) answers the state it wrote (see backends/common.repeated_fail).
SELECT %(wrote)s::text, NULL FROM {schema}.jobs j
WHERE j.id = %(id)s AND j.fence = %(fence)s AND j.fence > 0
  AND j.state = ANY (%(seen)s::text[]) AND j.lease_owner IS NULL AND j.error = %(error)s::jsonb

-- name: release
WITH upd AS (
    UPDATE {schema}.jobs
    SET state = 'queued', attempts = greatest(attempts - 1, 0),
        lease_owner = NULL, lease_until = NULL
    WHERE id = %(id)s AND fence = %(fence)s AND state = 'running'
    RETURNING queue
)
SELECT queue, CASE WHEN %(channel)s::text IS NOT NULL THEN pg_notify(%(channel)s, queue) END
FROM upd
UNION ALL
-- a repeat of a hand-back that took effect (see backends/common.repeated_release)
SELECT queue, NULL FROM {schema}.jobs
WHERE id = %(id)s AND fence = %(fence)s AND fence > 0 AND state = 'queued'
  AND lease_owner IS NULL

-- name: heartbeat
WITH clock AS (SELECT {now} AS now)
UPDATE {schema}.jobs j
SET lease_until = c.now + %(lease)s::float8
FROM unnest(%(ids)s::text[], %(fences)s::bigint[]) AS l (id, fence), clock c
WHERE j.id = l.id AND j.fence = l.fence AND j.state = 'running'
RETURNING j.id, j.fence, j.cancel_requested

-- name: recover
-- Running jobs whose lease expired: cancelled if a cancellation is pending, dead-lettered with
-- poison_message past max_stalls, else queued again (run_at and attempts unchanged).
WITH clock AS (SELECT {now} AS now),
stuck AS MATERIALIZED (
    SELECT j.id, j.lease_until AS old_lease,
        j.cancel_requested OR j.stalls + 1 > %(max_stalls)s::int AS finish,
        CASE
            WHEN j.cancel_requested THEN jsonb_build_object(
                'code', 'cancelled', 'type', 'Cancelled',
                'message', coalesce(j.cancel_reason, 'cancelled'),
                'traceback', NULL, 'attempt', j.attempts, 'at', c.now)
            ELSE jsonb_build_object(
                'code', 'poison_message', 'type', 'Stalled',
                'message', 'the job''s lease expired ' || (j.stalls + 1)
                    || ' times (worker died or hung); the limit is ' || %(max_stalls)s::int,
                'traceback', NULL, 'attempt', j.attempts, 'at', c.now)
        END AS err
    FROM {schema}.jobs j, clock c
    WHERE j.state = 'running' AND j.lease_until < (SELECT now FROM clock)
    ORDER BY j.lease_until, j.id
    LIMIT %(limit)s
    FOR UPDATE OF j SKIP LOCKED
),
upd AS (
    UPDATE {schema}.jobs j
    SET stalls = j.stalls + 1,
        lease_owner = NULL,
        lease_until = NULL,
        state = CASE
            WHEN j.cancel_requested THEN 'cancelled'
            WHEN s.finish THEN 'failed'
            ELSE 'queued'
        END,
        finished_at = CASE WHEN s.finish THEN c.now ELSE j.finished_at END,
        error = CASE WHEN s.finish THEN s.err ELSE j.error END,
        errors = CASE WHEN s.finish THEN j.errors || jsonb_build_array(s.err) ELSE j.errors END
    FROM stuck s, clock c
    WHERE j.id = s.id
    RETURNING s.old_lease, j.id, j.task, j.queue, j.state, j.stalls, j.attempts
)
SELECT old_lease, id, task, queue, state, stalls, attempts,
    CASE
        WHEN state = 'queued' AND %(jobs_channel)s::text IS NOT NULL
            THEN pg_notify(%(jobs_channel)s, queue)
        WHEN state <> 'queued' AND %(done_channel)s::text IS NOT NULL
            THEN pg_notify(%(done_channel)s, id)
    END
FROM upd

-- name: set_progress
UPDATE {schema}.jobs SET progress = %(progress)s
WHERE id = %(id)s AND fence = %(fence)s AND state = 'running'
RETURNING id

-- name: append_logs
INSERT INTO {schema}.job_logs (job_id, entry)
SELECT %(id)s, x.entry
FROM unnest(%(entries)s::json[]) WITH ORDINALITY AS x (entry, ord)
WHERE EXISTS (SELECT 1 FROM {schema}.jobs WHERE id = %(id)s)
ORDER BY x.ord

-- name: cancel
-- Waiting → cancelled; running → cancellation requested. Returns (new state, state seen).
WITH clock AS (SELECT {now} AS now),
seen AS (SELECT state FROM {schema}.jobs WHERE id = %(id)s),
upd AS (
    UPDATE {schema}.jobs j
    SET state = CASE WHEN j.state = 'running' THEN 'running' ELSE 'cancelled' END,
        cancel_requested = j.cancel_requested OR j.state = 'running',
        cancel_reason = %(reason)s,
        finished_at = CASE WHEN j.state = 'running' THEN j.finished_at ELSE c.now END,
        error = CASE WHEN j.state = 'running' THEN j.error ELSE jsonb_build_object(
            'code', 'cancelled', 'type', 'Cancelled',
            'message', coalesce(%(reason)s, 'cancelled'),
            'traceback', NULL, 'attempt', j.attempts, 'at', c.now) END,
        errors = CASE WHEN j.state = 'running' THEN j.errors ELSE j.errors || jsonb_build_array(
            jsonb_build_object(
            'code', 'cancelled', 'type', 'Cancelled',
            'message', coalesce(%(reason)s, 'cancelled'),
            'traceback', NULL, 'attempt', j.attempts, 'at', c.now)) END
    FROM clock c
    WHERE j.id = %(id)s AND j.state IN ('scheduled', 'queued', 'blocked', 'running')
    RETURNING j.id, j.state
),
note AS (
    SELECT pg_notify(%(done_channel)s, id) FROM upd
    WHERE state = 'cancelled' AND %(done_channel)s::text IS NOT NULL
)
SELECT (SELECT state FROM upd), (SELECT state FROM seen), (SELECT count(*) FROM note)

-- name: retry_page
-- One page of jobs retry_jobs looks at: failed, cancelled or expired, matching, in id order
-- after %(after)s; locked until the transaction ends (rows another retry holds are skipped).
SELECT j.id, j.idempotency_key FROM {schema}.jobs j
WHERE j.state IN ('failed', 'cancelled', 'expired') AND {filter} AND j.id > %(after)s::text
ORDER BY j.id
LIMIT %(page)s
FOR UPDATE OF j SKIP LOCKED

-- name: key_holders
-- The jobs holding these idempotency keys now (run after locking the keys).
SELECT h.idempotency_key, h.id FROM {schema}.jobs h
WHERE h.idempotency_key = ANY (%(keys)s::text[]) AND h.state IN ({holding})
ORDER BY h.id

-- name: retry_ids
-- The chosen jobs back to queued (a job keeps its error history). Without a reset, a job whose
-- attempts are used up gets one more run, and its max_attempts says so.
WITH clock AS (SELECT {now} AS now),
upd AS (
    UPDATE {schema}.jobs j
    SET state = 'queued', run_at = c.now,
        attempts = CASE WHEN %(reset)s THEN 0 ELSE j.attempts END,
        max_attempts = CASE WHEN %(reset)s THEN j.max_attempts
            ELSE greatest(j.max_attempts, j.attempts + 1) END,
        stalls = 0, finished_at = NULL, cancel_requested = false, cancel_reason = NULL,
        dead_letter_queue = NULL, lease_owner = NULL, lease_until = NULL
    FROM clock c
    WHERE j.id = ANY (%(ids)s::text[])
    RETURNING j.id, j.queue
)
SELECT id, CASE WHEN %(channel)s::text IS NOT NULL THEN pg_notify(%(channel)s, queue) END
FROM upd
ORDER BY id

-- name: delete_batch
-- One small batch of finished jobs (short transactions, no long-held locks); the key rows of
-- keys no remaining job uses go too (skipping any an enqueue holds right now).
WITH doomed AS MATERIALIZED (
    SELECT j.id, j.idempotency_key FROM {schema}.jobs j
    WHERE j.state IN ('completed', 'failed', 'cancelled', 'expired') AND {filter}
    ORDER BY j.id
    LIMIT %(limit)s
    FOR UPDATE OF j SKIP LOCKED
),
gone AS (
    DELETE FROM {schema}.jobs j
    WHERE j.id = ANY (ARRAY(SELECT id FROM doomed))
    RETURNING j.id
),
unused AS (
    SELECT k.key FROM {schema}.idempotency_keys k
    WHERE k.key IN (SELECT idempotency_key FROM doomed WHERE idempotency_key IS NOT NULL)
      AND NOT EXISTS (
          SELECT 1 FROM {schema}.jobs o
          WHERE o.idempotency_key = k.key AND o.id NOT IN (SELECT id FROM doomed))
    FOR UPDATE OF k SKIP LOCKED
),
keys_gone AS (
    DELETE FROM {schema}.idempotency_keys k USING unused WHERE k.key = unused.key
)
SELECT count(*) FROM gone

-- name: list_jobs
SELECT {job_columns}
FROM {schema}.jobs j
WHERE {filter}
ORDER BY j.id DESC
LIMIT %(limit)s OFFSET %(offset)s

-- name: list_summaries
-- `list_jobs` for listings: no payload, result, progress, logs, error history or traceback.
SELECT {summary_columns}
FROM {schema}.jobs j
WHERE {filter}
ORDER BY j.id DESC
LIMIT %(limit)s OFFSET %(offset)s

-- name: get_job
SELECT {job_columns}
FROM {schema}.jobs j
WHERE j.id = %(id)s

-- name: count_jobs
SELECT queue, task, state, count(*) FROM {schema}.jobs GROUP BY queue, task, state

-- name: wait_probe
-- Is a job queued in these queues, and when is the next scheduled one due (server clock)?
SELECT
    EXISTS (
        SELECT 1 FROM {schema}.jobs
        WHERE state = 'queued' AND queue = ANY (%(queues)s::text[])
    ),
    (SELECT min(run_at) FROM {schema}.jobs
     WHERE state = 'scheduled' AND queue = ANY (%(queues)s::text[])),
    extract(epoch FROM clock_timestamp())::float8

-- name: notify
SELECT pg_notify(%(channel)s, p) FROM unnest(%(payloads)s::text[]) AS p

-- name: register_worker
INSERT INTO {schema}.workers (id, host, pid, started_at, heartbeat_at, queues, concurrency, stats)
VALUES (%(id)s, %(host)s, %(pid)s, %(started_at)s, %(heartbeat_at)s, %(queues)s::text[],
        %(concurrency)s, %(stats)s::json)
ON CONFLICT (id) DO UPDATE SET
    host = EXCLUDED.host, pid = EXCLUDED.pid, started_at = EXCLUDED.started_at,
    heartbeat_at = EXCLUDED.heartbeat_at, queues = EXCLUDED.queues,
    concurrency = EXCLUDED.concurrency, stats = EXCLUDED.stats

-- name: unregister_worker
DELETE FROM {schema}.workers WHERE id = %(id)s

-- name: list_workers
SELECT id, host, pid, started_at, heartbeat_at, queues, concurrency, stats
FROM {schema}.workers ORDER BY id

-- name: prune_workers
DELETE FROM {schema}.workers WHERE heartbeat_at < %(before)s
