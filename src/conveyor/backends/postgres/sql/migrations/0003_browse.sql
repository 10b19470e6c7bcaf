-- Migration 0003: the dashboard's reads (the browse capability). Keyset paging and capped
-- counts per queue and per task have an index each (per state: jobs_state_idx); the dead-letter
-- set by error code has a partial one (only failed rows pay for it).
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
