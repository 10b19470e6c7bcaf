-- Migration 0002: small shared key-value state (schedules), updated by compare-and-set.
CREATE TABLE {schema}.kv (
    namespace  text COLLATE "C" NOT NULL,
    key        text COLLATE "C" NOT NULL,
    value      bytea NOT NULL,
    PRIMARY KEY (namespace, key)
) WITH (fillfactor = 70);
