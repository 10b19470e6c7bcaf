-- Migration 0004: the event bus (log, subscriptions, deliveries, ordered chains) and
-- event-sourced streams with snapshots.
--
-- Positions come from the one row of bus_state: a publish bumps it first, and the row stays
-- locked until the publishing transaction ends, so positions are handed out in commit order
-- (a bigserial would not be: a later value can commit first, and a cursor would skip the
-- earlier one). The row survives retention, so positions are never reused.
CREATE TABLE {schema}.bus_state (
    id        integer PRIMARY KEY CHECK (id = 1),
    position  bigint NOT NULL,
    version   bigint NOT NULL
) WITH (fillfactor = 20);
INSERT INTO {schema}.bus_state (id, position, version) VALUES (1, 0, 0);

CREATE TABLE {schema}.bus_subscriptions (
    name        text COLLATE "C" PRIMARY KEY,
    pattern     text COLLATE "C" NOT NULL,
    spec        json NOT NULL,
    position    bigint NOT NULL,
    created_at  double precision NOT NULL
);

CREATE TABLE {schema}.bus_events (
    position        bigint PRIMARY KEY,
    id              text COLLATE "C" NOT NULL UNIQUE,
    name            text COLLATE "C" NOT NULL,
    payload         bytea NOT NULL,
    key             text COLLATE "C",
    priority        integer NOT NULL,
    headers         json NOT NULL,
    schema_version  integer NOT NULL,
    occurred_at     double precision NOT NULL,
    stored_at       double precision NOT NULL
);
CREATE INDEX bus_events_occurred_idx ON {schema}.bus_events (occurred_at);
CREATE INDEX bus_events_key_idx ON {schema}.bus_events (key, position) WHERE key IS NOT NULL;

-- One row per (event, subscription): the job running the handler and what became of it.
CREATE TABLE {schema}.bus_deliveries (
    event_id      text COLLATE "C" NOT NULL,
    subscription  text COLLATE "C" NOT NULL,
    position      bigint NOT NULL,
    job_id        text COLLATE "C" NOT NULL UNIQUE,
    status        text COLLATE "C" NOT NULL CHECK (status IN ('live', 'handled', 'dead')),
    chain         text COLLATE "C",
    seq           bigint NOT NULL DEFAULT 0,
    in_chain      boolean NOT NULL DEFAULT false,
    created_at    double precision NOT NULL,
    finished_at   double precision,
    PRIMARY KEY (event_id, subscription)
) WITH (fillfactor = 80);
CREATE INDEX bus_deliveries_position_idx ON {schema}.bus_deliveries (position, subscription);
CREATE INDEX bus_deliveries_sub_idx ON {schema}.bus_deliveries (subscription, position);
CREATE INDEX bus_deliveries_chain_idx ON {schema}.bus_deliveries (subscription, chain, seq)
    WHERE in_chain;

-- Ordered chains with deliveries in them: how many, and the last place handed out.
CREATE TABLE {schema}.bus_chains (
    subscription  text COLLATE "C" NOT NULL,
    chain         text COLLATE "C" NOT NULL,
    pending       bigint NOT NULL,
    seq           bigint NOT NULL,
    PRIMARY KEY (subscription, chain)
) WITH (fillfactor = 50);

-- Event sourcing: the events of each stream, numbered 1, 2, ... per stream.
CREATE TABLE {schema}.streams (
    stream          text COLLATE "C" NOT NULL,
    version         bigint NOT NULL,
    id              text COLLATE "C" NOT NULL UNIQUE,
    name            text COLLATE "C" NOT NULL,
    payload         bytea NOT NULL,
    headers         json NOT NULL,
    schema_version  integer NOT NULL,
    recorded_at     double precision NOT NULL,
    PRIMARY KEY (stream, version)
);
CREATE INDEX streams_recorded_idx ON {schema}.streams (recorded_at);

CREATE TABLE {schema}.stream_snapshots (
    stream          text COLLATE "C" NOT NULL,
    version         bigint NOT NULL,
    state           bytea NOT NULL,
    schema_version  integer NOT NULL,
    taken_at        double precision NOT NULL,
    PRIMARY KEY (stream, version)
);
