"""Enqueue and complete inside the application's own SQLite transaction (the outbox pattern).

The application passes its own ``sqlite3.Connection`` to the same database file, with a
transaction open (``BEGIN IMMEDIATE`` is best: a deferred transaction that has read may fail
to upgrade to a write when another process wrote meanwhile). The jobs are written with that
connection and never committed here: they exist if and only if the application commits.
Workers notice the commit through their ``PRAGMA data_version`` poll (within ~50 ms).

These functions run on the caller's thread, because a ``sqlite3.Connection`` belongs to the
thread that made it.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence

from conveyor.backends.sqlite import ops as ops
from conveyor.backends.sqlite.notify import Effects
from conveyor.backends.sqlite.queries import encode_job
from conveyor.backends.sqlite.schema import SCHEMA_VERSION, schema_version
from conveyor.domain.job import EnqueueResult, NewJob
from conveyor.errors import ConfigurationError, InvalidStateError, SchemaVersionError

__all__ = ["append_logs_on_sync", "check_connection", "complete_on_sync", "enqueue_on_sync"]


def check_connection(conn: sqlite3.Connection, path: str) -> None:
    """Refuse a connection that is not a usable, open transaction on the queue's file."""
    if not isinstance(conn, sqlite3.Connection):
        raise ConfigurationError(
            f"connection= must be a sqlite3.Connection for the SQLite backend, not "
            f"{type(conn).__name__}"
        )
    if not conn.in_transaction:
        raise InvalidStateError(
            "connection= needs an open transaction (execute 'BEGIN IMMEDIATE' first); "
            "otherwise the jobs would be committed on their own, outside your transaction"
        )
    rows = conn.execute("PRAGMA database_list").fetchall()
    main = next((row[2] for row in rows if row[1] == "main"), "")
    if not main or not os.path.exists(main) or not os.path.samefile(main, path):
        raise ConfigurationError(
            f"connection= is open on {main or 'an in-memory database'!r}, but this queue "
            f"lives in {path}; open the connection on the queue's file"
        )
    version = schema_version(conn)
    if version != SCHEMA_VERSION:
        raise SchemaVersionError(
            f"the SQLite database {path} has schema version {version}, this Conveyor needs "
            f"{SCHEMA_VERSION}; run 'conveyor db migrate' (or open the queue once) first"
        )


def enqueue_on_sync(
    conn: sqlite3.Connection, path: str, jobs: Sequence[NewJob], now: float | None = None
) -> list[EnqueueResult]:
    """Store ``jobs`` with the caller's connection inside its open transaction."""
    check_connection(conn, path)
    batch = list(jobs)
    encoded = [encode_job(job) for job in batch]
    return ops.enqueue(conn, Effects(), batch, encoded, now)


def complete_on_sync(
    conn: sqlite3.Connection,
    path: str,
    job_id: str,
    fence: int,
    result: bytes | None,
    now: float | None = None,
) -> bool:
    """Fenced completion with the caller's connection inside its open transaction, so the
    handler's own writes and the completion commit (or roll back) together."""
    check_connection(conn, path)
    # Only a held lease counts here: a repeat would commit the caller's writes a second time.
    return ops.complete(conn, Effects(), job_id, fence, result, now, repeat_ok=False)


def append_logs_on_sync(conn: sqlite3.Connection, path: str, job_id: str, lines: str) -> None:
    """Append pre-encoded log lines with the caller's connection inside its transaction."""
    check_connection(conn, path)
    ops.append_logs(conn, Effects(), job_id, lines)
