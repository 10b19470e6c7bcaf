-- Conveyor SQLite schema, version 1.
--
-- Applied inside one BEGIN IMMEDIATE transaction that also sets PRAGMA user_version = 1.
-- Every statement is idempotent (IF NOT EXISTS), so a half-known database is repaired, not
-- broken. Times are epoch seconds (REAL); states are the JobState strings verbatim.
-- errors and logs are newline-delimited JSON (one object per line) so that appending is a
-- string concatenation; error holds the last error as one JSON object.

CREATE TABLE IF NOT EXISTS conveyor_jobs (
    id               TEXT    NOT NULL PRIMARY KEY,
    task             TEXT    NOT NULL,
    queue            TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    payload          BLOB    NOT NULL,
    priority         INTEGER NOT NULL DEFAULT 0,
    run_at           REAL    NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL DEFAULT 1,
    created_at       REAL    NOT NULL,
    fence            INTEGER NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_until      REAL,
    timeout          REAL,
    expires_at       REAL,
    idempotency_key  TEXT,
    concurrency_key  TEXT,
    result           BLOB,
    error            TEXT,
    error_code       TEXT,
    errors           TEXT    NOT NULL DEFAULT '',
    progress         BLOB,
    logs             TEXT    NOT NULL DEFAULT '',
    trace_id         TEXT,
    metadata         TEXT    NOT NULL DEFAULT '{}',
    workflow_id      TEXT,
    parents          TEXT    NOT NULL DEFAULT '[]',
    started_at       REAL,
    finished_at      REAL,
    payload_version  INTEGER NOT NULL DEFAULT 1,
    stalls           INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    cancel_reason    TEXT,
    dead_letter_queue TEXT
);

-- The claim path: queued jobs of one queue in strict order.
CREATE INDEX IF NOT EXISTS conveyor_jobs_ready
    ON conveyor_jobs (queue, priority DESC, run_at, id) WHERE state = 'queued';

-- Promotion of due scheduled jobs, and the next due time for wait_for_jobs.
CREATE INDEX IF NOT EXISTS conveyor_jobs_scheduled
    ON conveyor_jobs (run_at) WHERE state = 'scheduled';

-- Expiry of waiting jobs whose TTL passed.
CREATE INDEX IF NOT EXISTS conveyor_jobs_expiring
    ON conveyor_jobs (expires_at)
    WHERE expires_at IS NOT NULL AND state IN ('queued', 'scheduled');

-- Recovery of running jobs whose lease expired.
CREATE INDEX IF NOT EXISTS conveyor_jobs_running
    ON conveyor_jobs (lease_until, id) WHERE state = 'running';

CREATE INDEX IF NOT EXISTS conveyor_jobs_workflow
    ON conveyor_jobs (workflow_id) WHERE workflow_id IS NOT NULL;

-- Idempotency keys: each key names the job that took it last. The key is held while that job
-- is in a key-holding state (scheduled, queued, running, blocked, completed).
CREATE TABLE IF NOT EXISTS conveyor_idempotency_keys (
    key    TEXT NOT NULL PRIMARY KEY,
    job_id TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS conveyor_workers (
    id           TEXT    NOT NULL PRIMARY KEY,
    host         TEXT    NOT NULL,
    pid          INTEGER NOT NULL,
    started_at   REAL    NOT NULL,
    heartbeat_at REAL    NOT NULL,
    queues       TEXT    NOT NULL,
    concurrency  INTEGER NOT NULL,
    stats        TEXT    NOT NULL
);
