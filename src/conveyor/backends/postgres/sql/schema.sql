-- Conveyor's PostgreSQL schema, current version, for a fresh install.
--
-- `{schema}` is replaced by the quoted schema name before this runs. Every change to this file
-- must also be a new numbered file in migrations/; a test checks that a fresh schema built from
-- this file and one built by applying every migration in order have the same catalog.
--
-- Times are epoch seconds in double precision, exactly the floats the core passes in, so fake
-- clocks round-trip bit for bit. Identifier-like text columns use the "C" collation so that
-- ordering matches Python's string order (job ids are time-sortable hex strings). Values the
-- application owns (metadata, log entries, worker stats) are `json`, kept as written, so every
-- number round-trips exactly; Conveyor's own error records are `jsonb`.

CREATE TABLE {schema}.jobs (
    id                text COLLATE "C" PRIMARY KEY,
    task              text COLLATE "C" NOT NULL,
    queue             text COLLATE "C" NOT NULL,
    state             text COLLATE "C" NOT NULL CHECK (state IN (
                          'scheduled', 'queued', 'running', 'completed',
                          'failed', 'cancelled', 'expired', 'blocked')),
    payload           bytea NOT NULL,
    priority          integer NOT NULL DEFAULT 0,
    run_at            double precision NOT NULL,
    attempts          integer NOT NULL DEFAULT 0,
    max_attempts      integer NOT NULL DEFAULT 1,
    fence             bigint NOT NULL DEFAULT 0,
    stalls            integer NOT NULL DEFAULT 0,
    lease_owner       text,
    lease_until       double precision,
    timeout           double precision,
    expires_at        double precision,
    idempotency_key   text,
    concurrency_key   text,
    result            bytea,
    error             jsonb,
    errors            jsonb NOT NULL DEFAULT '[]',
    progress          bytea,
    trace_id          text,
    metadata          json NOT NULL DEFAULT '{}',
    workflow_id       text,
    parents           text[] NOT NULL DEFAULT '{}',
    payload_version   integer NOT NULL DEFAULT 1,
    cancel_requested  boolean NOT NULL DEFAULT false,
    cancel_reason     text,
    dead_letter_queue text,
    created_at        double precision NOT NULL,
    started_at        double precision,
    finished_at       double precision
) WITH (
    -- A queue table churns: vacuum it early and without throttling, and leave room on each page
    -- so lease extensions and progress writes (unindexed columns) are HOT updates.
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_analyze_threshold = 500,
    autovacuum_vacuum_cost_delay = 0,
    autovacuum_vacuum_cost_limit = 10000
);

-- The claim: one index range scan per queue in (priority desc, run_at, id) order.
CREATE INDEX jobs_claim_idx ON {schema}.jobs (queue, priority DESC, run_at, id)
    WHERE state = 'queued';
-- Promotion of due scheduled jobs (future jobs stay out of the claim index).
CREATE INDEX jobs_scheduled_idx ON {schema}.jobs (run_at)
    WHERE state = 'scheduled';
-- TTL expiry of waiting jobs.
CREATE INDEX jobs_expiry_idx ON {schema}.jobs (expires_at)
    WHERE expires_at IS NOT NULL AND state IN ('queued', 'scheduled');
-- The running set (small). lease_until is deliberately not indexed so heartbeats are HOT.
CREATE INDEX jobs_running_idx ON {schema}.jobs (lease_owner)
    WHERE state = 'running';
-- Finding the job that holds an idempotency key. Not unique: a job retried from the
-- dead-letter set keeps its key even when a newer job took it meanwhile.
CREATE INDEX jobs_idempotency_idx ON {schema}.jobs (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- Retention and age filters.
CREATE INDEX jobs_finished_idx ON {schema}.jobs (finished_at)
    WHERE finished_at IS NOT NULL;
CREATE INDEX jobs_state_idx ON {schema}.jobs (state, id);
CREATE INDEX jobs_workflow_idx ON {schema}.jobs (workflow_id)
    WHERE workflow_id IS NOT NULL;

-- Handler log lines: append-only inserts, so logging never rewrites the job row.
CREATE TABLE {schema}.job_logs (
    seq     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id  text COLLATE "C" NOT NULL REFERENCES {schema}.jobs (id) ON DELETE CASCADE,
    entry   json NOT NULL
) WITH (autovacuum_vacuum_insert_scale_factor = 0.2);
CREATE INDEX job_logs_job_idx ON {schema}.job_logs (job_id, seq);

-- One row per idempotency key in use: enqueue locks a key's row (FOR UPDATE through an
-- upsert) before looking for a holder, so concurrent enqueues of one key, including ones
-- inside long application transactions, are serialized without a unique index.
CREATE TABLE {schema}.idempotency_keys (
    key  text PRIMARY KEY
) WITH (fillfactor = 70);

-- The worker registry: a few rows rewritten by heartbeats (HOT: heartbeat_at is not indexed).
CREATE TABLE {schema}.workers (
    id            text COLLATE "C" PRIMARY KEY,
    host          text NOT NULL,
    pid           integer NOT NULL,
    started_at    double precision NOT NULL,
    heartbeat_at  double precision NOT NULL,
    queues        text[] NOT NULL,
    concurrency   integer NOT NULL,
    stats         json NOT NULL DEFAULT '{}'
) WITH (fillfactor = 50);

-- Small shared key-value state (schedules), updated by compare-and-set.
CREATE TABLE {schema}.kv (
    namespace  text COLLATE "C" NOT NULL,
    key        text COLLATE "C" NOT NULL,
    value      bytea NOT NULL,
    PRIMARY KEY (namespace, key)
) WITH (fillfactor = 70);

-- The dashboard's reads (migration 0003): keyset paging and capped counts per queue and per
-- task, the dead-letter set by error code.
CREATE INDEX jobs_queue_state_idx ON {schema}.jobs (queue, state, id);
CREATE INDEX jobs_task_state_idx ON {schema}.jobs (task, state, id);
CREATE INDEX jobs_dead_code_idx ON {schema}.jobs ((error ->> 'code'), id)
    WHERE state = 'failed';

-- Per-minute outcome counters that workers flush with their heartbeats.
CREATE TABLE {schema}.throughput (
    bucket    double precision NOT NULL,
    queue     text COLLATE "C" NOT NULL,
    task      text COLLATE "C" NOT NULL,
    outcome   text COLLATE "C" NOT NULL,
    count     bigint NOT NULL,
    duration  double precision NOT NULL,
    PRIMARY KEY (bucket, queue, task, outcome)
);
