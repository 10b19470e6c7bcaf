-- The statements of the PostgreSQL event bus, one per `-- name:` section (see queries.sql for
-- the placeholders). Schema: migrations/0004_events.sql.

-- name: bus_publish
-- One publish in one statement: check the subscription set's version and bump the position
-- counter (the row stays locked until the transaction ends: positions follow commit order),
-- store the events not stored yet, their deliveries (an ordered one joins its chain: blocked
-- when the chain has a delivery already) and the delivery jobs, and wake workers. A stale
-- version matches no row of bus_state: then nothing is written and `base` is NULL. An event
-- stored meanwhile by a concurrent publish of the same id is skipped by ON CONFLICT.
WITH t AS (SELECT {now} AS now),
input AS (
    SELECT * FROM unnest(
        %(ids)b::text[], %(names)b::text[], %(payloads)b::bytea[], %(keys)b::text[],
        %(priorities)b::int[], %(headers)b::text[], %(versions)b::int[], %(occurred)b::float8[]
    ) WITH ORDINALITY AS e (id, name, payload, key, priority, headers, schema_version,
        occurred_at, ord)
),
fresh AS MATERIALIZED (
    SELECT i.*, row_number() OVER (ORDER BY i.ord) AS rn
    FROM input i
    WHERE NOT EXISTS (SELECT 1 FROM {schema}.bus_events x WHERE x.id = i.id)
),
c AS (
    UPDATE {schema}.bus_state SET position = position + (SELECT count(*) FROM fresh)
    WHERE id = 1 AND version = %(version)s
    RETURNING position - (SELECT count(*) FROM fresh) AS base
),
ev AS (
    INSERT INTO {schema}.bus_events (position, id, name, payload, key, priority, headers,
        schema_version, occurred_at, stored_at)
    SELECT c.base + f.rn, f.id, f.name, f.payload, f.key, f.priority, f.headers::json,
        f.schema_version, coalesce(f.occurred_at, t.now), t.now
    FROM fresh f, c, t
    ORDER BY f.rn
    ON CONFLICT (id) DO NOTHING
    RETURNING id, position
),
dl_in AS MATERIALIZED (
    SELECT d.event_id, d.subscription, d.job_id, d.chain, d.ord, ev.position,
        row_number() OVER (PARTITION BY d.subscription, d.chain ORDER BY d.ord) AS r,
        count(*) OVER (PARTITION BY d.subscription, d.chain) AS k
    FROM unnest(%(d_events)b::text[], %(d_subs)b::text[], %(d_jobs)b::text[],
        %(d_chains)b::text[]) WITH ORDINALITY AS d (event_id, subscription, job_id, chain, ord)
    JOIN ev ON ev.id = d.event_id
),
ch AS (
    INSERT INTO {schema}.bus_chains AS b (subscription, chain, pending, seq)
    SELECT subscription, chain, count(*), count(*) FROM dl_in
    WHERE chain IS NOT NULL GROUP BY subscription, chain
    ON CONFLICT (subscription, chain)
    DO UPDATE SET pending = b.pending + EXCLUDED.pending, seq = b.seq + EXCLUDED.seq
    RETURNING subscription, chain, pending, seq
),
plan AS MATERIALIZED (
    SELECT d.event_id, d.subscription, d.position, d.job_id, d.chain, d.ord,
        coalesce(ch.seq - d.k + d.r, 0) AS seq,
        coalesce(ch.pending - d.k + d.r > 1, false) AS blocked
    FROM dl_in d LEFT JOIN ch ON ch.subscription = d.subscription AND ch.chain = d.chain
),
dl AS (
    INSERT INTO {schema}.bus_deliveries (event_id, subscription, position, job_id, status,
        chain, seq, in_chain, created_at)
    SELECT p.event_id, p.subscription, p.position, p.job_id, 'live', p.chain, p.seq,
        p.chain IS NOT NULL, t.now
    FROM plan p, t
),
jb AS (
    INSERT INTO {schema}.jobs (id, task, queue, state, payload, priority, run_at, max_attempts,
        timeout, trace_id, metadata, payload_version, created_at)
    SELECT n.id, n.task, n.queue,
        CASE WHEN p.blocked THEN 'blocked'
            WHEN coalesce(n.run_at, t.now + n.delay, t.now) > t.now THEN 'scheduled'
            ELSE 'queued' END,
        n.payload, n.priority, coalesce(n.run_at, t.now + n.delay, t.now), n.max_attempts,
        n.timeout, n.trace_id, coalesce(n.metadata::json, '{}'::json), n.payload_version, t.now
    FROM unnest(%(j_ids)b::text[], %(j_tasks)b::text[], %(j_queues)b::text[],
        %(j_payloads)b::bytea[], %(j_priorities)b::int[], %(j_attempts)b::int[],
        %(j_timeouts)b::float8[], %(j_traces)b::text[], %(j_metas)b::text[],
        %(j_versions)b::int[], %(j_run_ats)b::float8[], %(j_delays)b::float8[])
        WITH ORDINALITY AS n (id, task, queue, payload, priority, max_attempts, timeout,
            trace_id, metadata, payload_version, run_at, delay, ord)
    JOIN plan p ON p.job_id = n.id
    CROSS JOIN t
    ORDER BY n.ord
    RETURNING queue, state
)
SELECT (SELECT base FROM c),
    (SELECT coalesce(json_agg(json_build_array(id, position)), '[]'::json) FROM ev),
    (SELECT count(pg_notify(%(channel)s, s.queue))
     FROM (SELECT DISTINCT queue FROM jb WHERE state = 'queued') AS s)

-- name: bus_positions
SELECT id, position FROM {schema}.bus_events WHERE id = ANY (%(ids)s::text[])

-- name: bus_lock
-- Lock the bus state row until the transaction ends (no subscription or publish can commit
-- meanwhile); the head position and the subscription set's version.
UPDATE {schema}.bus_state SET version = version WHERE id = 1 RETURNING position, version

-- name: bus_subscriptions
SELECT s.name, s.pattern, s.spec::text, s.position, s.created_at, b.version
FROM {schema}.bus_state b LEFT JOIN {schema}.bus_subscriptions s ON true
WHERE b.id = 1
ORDER BY s.name

-- name: bus_finish
-- Record a delivery's outcome (never downgrading a handled one); in_chain says whether its
-- chain must be advanced.
UPDATE {schema}.bus_deliveries
SET status = %(status)s, finished_at = {now}
WHERE job_id = %(job)s AND status <> 'handled' AND status <> %(status)s
RETURNING event_id, subscription, chain, in_chain

-- name: bus_leave_chain
WITH d AS (
    UPDATE {schema}.bus_deliveries SET in_chain = false
    WHERE event_id = %(event)s AND subscription = %(sub)s AND in_chain
    RETURNING subscription, chain
)
UPDATE {schema}.bus_chains b SET pending = b.pending - 1
FROM d WHERE b.subscription = d.subscription AND b.chain = d.chain
RETURNING b.chain

-- name: bus_chain_head
-- (Run while holding the chain's row: every change to the chain's members takes it first.)
SELECT d.event_id, d.status, j.state, j.queue, d.job_id
FROM {schema}.bus_deliveries d LEFT JOIN {schema}.jobs j ON j.id = d.job_id
WHERE d.subscription = %(sub)s AND d.chain = %(chain)s AND d.in_chain
ORDER BY d.seq LIMIT 1

-- name: bus_unblock
WITH u AS (
    UPDATE {schema}.jobs SET state = 'queued' WHERE id = %(job)s AND state = 'blocked'
    RETURNING queue
)
SELECT count(pg_notify(%(channel)s, queue)) FROM u

-- name: bus_drop_head
-- The first delivery of a chain ended without being finished: mark it, take it out.
WITH d AS (
    UPDATE {schema}.bus_deliveries
    SET status = CASE WHEN status <> 'live' THEN status ELSE %(status)s END,
        finished_at = coalesce(finished_at, {now}), in_chain = false
    WHERE event_id = %(event)s AND subscription = %(sub)s AND in_chain
    RETURNING subscription, chain
)
UPDATE {schema}.bus_chains b SET pending = b.pending - 1
FROM d WHERE b.subscription = d.subscription AND b.chain = d.chain

-- name: bus_drop_chain
DELETE FROM {schema}.bus_chains WHERE subscription = %(sub)s AND chain = %(chain)s

-- name: bus_lock_chain
-- Lock order, to never deadlock: bus_state (publish, replay), then chain rows, then
-- deliveries, then jobs.
SELECT pending FROM {schema}.bus_chains
WHERE subscription = %(sub)s AND chain = %(chain)s FOR UPDATE

-- name: bus_chains
SELECT subscription, chain FROM {schema}.bus_chains ORDER BY subscription, chain LIMIT %(limit)s

-- name: bus_delivery_chain
SELECT chain FROM {schema}.bus_deliveries WHERE event_id = %(event)s AND subscription = %(sub)s

-- name: bus_delivery_for_update
SELECT d.status, j.state
FROM {schema}.bus_deliveries d LEFT JOIN {schema}.jobs j ON j.id = d.job_id
WHERE d.event_id = %(event)s AND d.subscription = %(sub)s
FOR UPDATE OF d

-- name: bus_delete_delivery
DELETE FROM {schema}.bus_deliveries WHERE event_id = %(event)s AND subscription = %(sub)s

-- name: bus_join_chain
INSERT INTO {schema}.bus_chains AS b (subscription, chain, pending, seq)
VALUES (%(sub)s, %(chain)s, 1, 1)
ON CONFLICT (subscription, chain)
DO UPDATE SET pending = b.pending + 1, seq = b.seq + 1
RETURNING pending, seq

-- name: bus_insert_delivery
INSERT INTO {schema}.bus_deliveries (event_id, subscription, position, job_id, status, chain,
    seq, in_chain, created_at)
VALUES (%(event)s, %(sub)s, %(position)s, %(job)s, 'live', %(chain)s, %(seq)s,
    %(chain)s::text IS NOT NULL, {now})

-- name: bus_prune
WITH doomed AS MATERIALIZED (
    SELECT e.id FROM {schema}.bus_events e
    WHERE e.stored_at < %(before)s AND NOT EXISTS (
        SELECT 1 FROM {schema}.bus_deliveries d WHERE d.event_id = e.id AND d.status = 'live')
    ORDER BY e.position LIMIT %(limit)s
),
gone AS (
    DELETE FROM {schema}.bus_deliveries WHERE event_id = ANY (ARRAY(SELECT id FROM doomed))
)
DELETE FROM {schema}.bus_events WHERE id = ANY (ARRAY(SELECT id FROM doomed))

-- name: stream_lock
-- Appends to one stream take turns (the check and the insert below see every earlier one).
SELECT pg_advisory_xact_lock(hashtextextended('conveyor.stream:' || %(stream)s, 0))

-- name: stream_append
-- Append if the stream is at the expected version (NULL: any). An append whose first event id
-- is already in the stream answers as it did. A stream whose events were all pruned keeps its
-- version in its latest snapshot.
WITH cur AS (
    SELECT greatest(
        coalesce((SELECT max(version) FROM {schema}.streams WHERE stream = %(stream)s), 0),
        coalesce((SELECT max(version) FROM {schema}.stream_snapshots
                  WHERE stream = %(stream)s), 0)) AS v
),
dup AS (
    SELECT version FROM {schema}.streams WHERE id = %(first)s AND stream = %(stream)s
),
ins AS (
    INSERT INTO {schema}.streams (stream, version, id, name, payload, headers, schema_version,
        recorded_at)
    SELECT %(stream)s, cur.v + e.ord, e.id, e.name, e.payload, e.headers::json, e.sv, {now}
    FROM cur, unnest(%(ids)s::text[], %(names)s::text[], %(payloads)b::bytea[],
        %(headers)s::text[], %(versions)s::int[]) WITH ORDINALITY AS e (id, name, payload,
        headers, sv, ord)
    WHERE NOT EXISTS (SELECT 1 FROM dup)
      AND (%(expected)s::bigint IS NULL OR cur.v = %(expected)s::bigint)
    RETURNING version
)
SELECT (SELECT v FROM cur), (SELECT version FROM dup), (SELECT max(version) FROM ins)

-- name: stream_read
SELECT version, id, name, payload, headers::text, schema_version, recorded_at
FROM {schema}.streams WHERE stream = %(stream)s AND version > %(after)s
ORDER BY version LIMIT %(limit)s

-- name: stream_version
SELECT greatest(
    coalesce((SELECT max(version) FROM {schema}.streams WHERE stream = %(stream)s), 0),
    coalesce((SELECT max(version) FROM {schema}.stream_snapshots WHERE stream = %(stream)s), 0))

-- name: snapshot_save
INSERT INTO {schema}.stream_snapshots (stream, version, state, schema_version, taken_at)
VALUES (%(stream)s, %(version)s, %(state)s, %(sv)s, {now})
ON CONFLICT (stream, version) DO UPDATE
SET state = EXCLUDED.state, schema_version = EXCLUDED.schema_version, taken_at = EXCLUDED.taken_at

-- name: snapshot_load
SELECT version, state, schema_version, taken_at FROM {schema}.stream_snapshots
WHERE stream = %(stream)s ORDER BY version DESC LIMIT 1

-- name: stream_prune
WITH latest AS (
    SELECT stream, max(version) AS version FROM {schema}.stream_snapshots GROUP BY stream
),
old_snapshots AS (
    DELETE FROM {schema}.stream_snapshots s USING latest l
    WHERE s.stream = l.stream AND s.version < l.version
),
doomed AS (
    SELECT e.stream, e.version FROM {schema}.streams e JOIN latest l ON l.stream = e.stream
    WHERE e.version <= l.version AND e.recorded_at < %(before)s
    LIMIT %(limit)s
)
DELETE FROM {schema}.streams e USING doomed d
WHERE e.stream = d.stream AND e.version = d.version
