"""Event-sourced streams of the SQLite backend (tables ``conveyor_streams`` and
``conveyor_stream_snapshots``, migration 0004). Appends run in the writer's transaction, so the
expected-version check and the insert are one step; ``(stream, version)`` is the primary key
as a second guard. Mirrors :class:`~conveyor.backends.memory.streams.MemoryStreams`."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from conveyor.backends.capabilities.streams import EventStreams
from conveyor.backends.sqlite.queries import dumps
from conveyor.domain.events import AppendResult, NewStreamEvent, SnapshotRecord, StreamRecord

if TYPE_CHECKING:
    from conveyor.backends.sqlite.engine import Engine


def _version(conn: sqlite3.Connection, stream: str) -> int:
    row = conn.execute(
        "SELECT max(version) FROM conveyor_streams WHERE stream = ?", (stream,)
    ).fetchone()
    return int(row[0] or 0)


def append(
    conn: sqlite3.Connection,
    stream: str,
    events: Sequence[NewStreamEvent],
    expected: int | None,
    now: float | None,
) -> AppendResult:
    t = time.time() if now is None else now
    if events:
        row = conn.execute(
            "SELECT stream, version FROM conveyor_streams WHERE id = ?", (events[0].id,)
        ).fetchone()
        if row is not None and row[0] == stream:
            return AppendResult(True, int(row[1]) + len(events) - 1)
    current = max(_version(conn, stream), _pruned_version(conn, stream))
    if expected is not None and expected != current:
        return AppendResult(False, current)
    rows: list[tuple[Any, ...]] = []
    for e in events:
        current += 1
        rows.append(
            (stream, current, e.id, e.name, e.payload, dumps(e.headers), e.schema_version, t)
        )
    conn.executemany(
        "INSERT INTO conveyor_streams (stream, version, id, name, payload, headers, "
        "schema_version, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    return AppendResult(True, current)


def _pruned_version(conn: sqlite3.Connection, stream: str) -> int:
    """A stream whose events were all pruned keeps its version in its latest snapshot."""
    row = conn.execute(
        "SELECT max(version) FROM conveyor_stream_snapshots WHERE stream = ?", (stream,)
    ).fetchone()
    return int(row[0] or 0)


def read(conn: sqlite3.Connection, stream: str, after: int, limit: int) -> list[StreamRecord]:
    rows = conn.execute(
        "SELECT version, id, name, payload, headers, schema_version, recorded_at "
        "FROM conveyor_streams WHERE stream = ? AND version > ? ORDER BY version LIMIT ?",
        (stream, after, limit),
    ).fetchall()
    return [
        StreamRecord(stream, int(v), str(i), str(n), bytes(p), json.loads(h), int(sv), float(t))
        for v, i, n, p, h, sv, t in rows
    ]


def save_snapshot(
    conn: sqlite3.Connection,
    stream: str,
    version: int,
    state: bytes,
    schema_version: int,
    now: float | None,
) -> None:
    conn.execute(
        "INSERT INTO conveyor_stream_snapshots (stream, version, state, schema_version, "
        "taken_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (stream, version) DO UPDATE SET "
        "state = excluded.state, schema_version = excluded.schema_version, "
        "taken_at = excluded.taken_at",
        (stream, version, state, schema_version, time.time() if now is None else now),
    )


def load_snapshot(conn: sqlite3.Connection, stream: str) -> SnapshotRecord | None:
    row = conn.execute(
        "SELECT version, state, schema_version, taken_at FROM conveyor_stream_snapshots "
        "WHERE stream = ? ORDER BY version DESC LIMIT 1",
        (stream,),
    ).fetchone()
    if row is None:
        return None
    return SnapshotRecord(stream, int(row[0]), bytes(row[1]), int(row[2]), float(row[3]))


def prune(conn: sqlite3.Connection, before: float, limit: int) -> int:
    conn.execute(
        "DELETE FROM conveyor_stream_snapshots WHERE version < (SELECT max(s.version) FROM "
        "conveyor_stream_snapshots s WHERE s.stream = conveyor_stream_snapshots.stream)"
    )
    cur = conn.execute(
        "DELETE FROM conveyor_streams WHERE (stream, version) IN (SELECT e.stream, e.version "
        "FROM conveyor_streams e "
        "JOIN conveyor_stream_snapshots s ON s.stream = e.stream "
        "WHERE e.version <= s.version AND e.recorded_at < ? LIMIT ?)",
        (before, limit),
    )
    return int(cur.rowcount)


class _EngineSource(Protocol):
    async def engine(self) -> Engine: ...


class SQLiteStreams(EventStreams):
    """Mixed into :class:`~conveyor.backends.sqlite.SQLiteBackend`."""

    factory: _EngineSource

    async def stream_append(
        self,
        stream: str,
        events: Sequence[NewStreamEvent],
        expected_version: int | None,
        now: float | None = None,
    ) -> AppendResult:
        evs = list(events)
        engine = await self.factory.engine()
        return await engine.write(
            lambda conn, _fx: append(conn, stream, evs, expected_version, now)
        )

    async def stream_read(
        self, stream: str, after_version: int = 0, limit: int = 1000
    ) -> list[StreamRecord]:
        engine = await self.factory.engine()
        return await engine.read(lambda conn: read(conn, stream, after_version, limit))

    async def stream_version(self, stream: str) -> int:
        engine = await self.factory.engine()
        return await engine.read(
            lambda conn: max(_version(conn, stream), _pruned_version(conn, stream))
        )

    async def snapshot_save(
        self,
        stream: str,
        version: int,
        state: bytes,
        schema_version: int = 1,
        now: float | None = None,
    ) -> None:
        engine = await self.factory.engine()
        await engine.write(
            lambda conn, _fx: save_snapshot(conn, stream, version, state, schema_version, now)
        )

    async def snapshot_load(self, stream: str) -> SnapshotRecord | None:
        engine = await self.factory.engine()
        return await engine.read(lambda conn: load_snapshot(conn, stream))

    async def stream_prune(self, before: float, limit: int = 1000) -> int:
        engine = await self.factory.engine()
        return await engine.write(lambda conn, _fx: prune(conn, before, limit))
