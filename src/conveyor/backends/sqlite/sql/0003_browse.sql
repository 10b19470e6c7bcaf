-- Conveyor SQLite schema, version 3: the dashboard's reads (the browse capability).
-- Keyset paging and capped counts per state tab, per queue and per task each have an index;
-- the dead-letter set by error code has a partial one (only failed rows pay for it).
CREATE INDEX IF NOT EXISTS conveyor_jobs_by_state
    ON conveyor_jobs (state, id);
CREATE INDEX IF NOT EXISTS conveyor_jobs_by_queue
    ON conveyor_jobs (queue, state, id);
CREATE INDEX IF NOT EXISTS conveyor_jobs_by_task
    ON conveyor_jobs (task, state, id);
CREATE INDEX IF NOT EXISTS conveyor_jobs_dead_by_code
    ON conveyor_jobs (error_code, id) WHERE state = 'failed';

-- Per-minute outcome counters that workers flush with their heartbeats.
CREATE TABLE IF NOT EXISTS conveyor_throughput (
    bucket   REAL    NOT NULL,
    queue    TEXT    NOT NULL,
    task     TEXT    NOT NULL,
    outcome  TEXT    NOT NULL,
    count    INTEGER NOT NULL,
    duration REAL    NOT NULL,
    PRIMARY KEY (bucket, queue, task, outcome)
) WITHOUT ROWID;
