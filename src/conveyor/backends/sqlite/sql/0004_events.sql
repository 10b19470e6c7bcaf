-- Conveyor SQLite schema, version 4: the event bus (log, subscriptions, deliveries, chains)
-- and event-sourced streams with their snapshots.
--
-- Positions come from the one-row conveyor_bus_state, bumped inside the write transaction:
-- SQLite has one writer at a time, so positions follow commit order, and the counter row
-- survives retention, so a position is never reused.
CREATE TABLE IF NOT EXISTS conveyor_bus_state (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    position  INTEGER NOT NULL,
    version   INTEGER NOT NULL
);
INSERT OR IGNORE INTO conveyor_bus_state (id, position, version) VALUES (1, 0, 0);

CREATE TABLE IF NOT EXISTS conveyor_bus_subscriptions (
    name        TEXT PRIMARY KEY,
    pattern     TEXT NOT NULL,
    spec        TEXT NOT NULL,
    position    INTEGER NOT NULL,
    created_at  REAL NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS conveyor_bus_events (
    position        INTEGER PRIMARY KEY,
    id              TEXT NOT NULL UNIQUE,
    name            TEXT NOT NULL,
    payload         BLOB NOT NULL,
    key             TEXT,
    priority        INTEGER NOT NULL,
    headers         TEXT NOT NULL,
    schema_version  INTEGER NOT NULL,
    occurred_at     REAL NOT NULL,
    stored_at       REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS conveyor_bus_events_occurred ON conveyor_bus_events (occurred_at);
CREATE INDEX IF NOT EXISTS conveyor_bus_events_key ON conveyor_bus_events (key, position)
    WHERE key IS NOT NULL;

-- One row per (event, subscription): the job that runs the handler and what became of it.
-- status: live (not finished), handled, dead. An ordered delivery has a chain (the event's
-- key) and its place in it (seq); in_chain while it holds up the ones after it.
CREATE TABLE IF NOT EXISTS conveyor_bus_deliveries (
    event_id      TEXT NOT NULL,
    subscription  TEXT NOT NULL,
    position      INTEGER NOT NULL,
    job_id        TEXT NOT NULL,
    status        TEXT NOT NULL,
    chain         TEXT,
    seq           INTEGER NOT NULL DEFAULT 0,
    in_chain      INTEGER NOT NULL DEFAULT 0,
    created_at    REAL NOT NULL,
    finished_at   REAL,
    PRIMARY KEY (event_id, subscription)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS conveyor_bus_deliveries_job
    ON conveyor_bus_deliveries (job_id);
CREATE INDEX IF NOT EXISTS conveyor_bus_deliveries_position
    ON conveyor_bus_deliveries (position, subscription);
CREATE INDEX IF NOT EXISTS conveyor_bus_deliveries_sub
    ON conveyor_bus_deliveries (subscription, position);
CREATE INDEX IF NOT EXISTS conveyor_bus_deliveries_chain
    ON conveyor_bus_deliveries (subscription, chain, seq) WHERE in_chain = 1;

-- Ordered chains with deliveries in them: how many, and the last place handed out.
CREATE TABLE IF NOT EXISTS conveyor_bus_chains (
    subscription  TEXT NOT NULL,
    chain         TEXT NOT NULL,
    pending       INTEGER NOT NULL,
    seq           INTEGER NOT NULL,
    PRIMARY KEY (subscription, chain)
) WITHOUT ROWID;

-- Event sourcing: one row per event of a stream, numbered 1, 2, ... per stream.
CREATE TABLE IF NOT EXISTS conveyor_streams (
    stream          TEXT NOT NULL,
    version         INTEGER NOT NULL,
    id              TEXT NOT NULL UNIQUE,
    name            TEXT NOT NULL,
    payload         BLOB NOT NULL,
    headers         TEXT NOT NULL,
    schema_version  INTEGER NOT NULL,
    recorded_at     REAL NOT NULL,
    PRIMARY KEY (stream, version)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS conveyor_streams_recorded ON conveyor_streams (recorded_at);

CREATE TABLE IF NOT EXISTS conveyor_stream_snapshots (
    stream          TEXT NOT NULL,
    version         INTEGER NOT NULL,
    state           BLOB NOT NULL,
    schema_version  INTEGER NOT NULL,
    taken_at        REAL NOT NULL,
    PRIMARY KEY (stream, version)
) WITHOUT ROWID;
