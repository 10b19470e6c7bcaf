-- Conveyor SQLite schema, version 2: small shared key-value state (schedules).
CREATE TABLE IF NOT EXISTS conveyor_kv (
    namespace  TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      BLOB NOT NULL,
    PRIMARY KEY (namespace, key)
) WITHOUT ROWID;
