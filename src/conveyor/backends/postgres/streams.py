"""Event-sourced streams of the PostgreSQL backend (tables ``streams`` and
``stream_snapshots``, migration 0004; statements in ``sql/events.sql``). Appends to one stream
take turns on a transaction-scoped advisory lock, then check the expected version and insert in
one statement; the ``(stream, version)`` primary key is a second guard. Mirrors
:class:`~conveyor.backends.memory.streams.MemoryStreams`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from conveyor.backends.capabilities.streams import EventStreams
from conveyor.backends.postgres.events import bus_queries
from conveyor.domain.events import AppendResult, NewStreamEvent, SnapshotRecord, StreamRecord

if TYPE_CHECKING:
    from conveyor.backends.postgres.client import Conn


def _f(value: float | None) -> float | None:
    return None if value is None else float(value)


class PostgresStreams(EventStreams):
    """Mixed into :class:`~conveyor.backends.postgres.backend.PostgresBackend`."""

    schema: str

    if TYPE_CHECKING:  # provided by PostgresClient

        async def _run(self, op: Any, retry: str | None = None) -> Any: ...

    async def stream_append(
        self,
        stream: str,
        events: Sequence[NewStreamEvent],
        expected_version: int | None,
        now: float | None = None,
    ) -> AppendResult:
        q = bus_queries(self.schema)
        params = {
            "stream": stream,
            "expected": expected_version,
            "now": _f(now),
            "first": events[0].id if events else None,
            "ids": [e.id for e in events],
            "names": [e.name for e in events],
            "payloads": [bytes(e.payload) for e in events],
            "headers": [json.dumps(e.headers) for e in events],
            "versions": [int(e.schema_version) for e in events],
        }

        async def op(conn: Conn) -> AppendResult:
            async with conn.transaction():
                async with conn.pipeline():
                    await conn.execute(q["stream_lock"], {"stream": stream})
                    cur = await conn.execute(q["stream_append"], params)
                row = await cur.fetchone()
            assert row is not None
            current, dup, last = row
            if dup is not None:
                return AppendResult(True, int(dup) + len(events) - 1)
            if last is not None:
                return AppendResult(True, int(last))
            ok = not events and (expected_version is None or expected_version == current)
            return AppendResult(ok, int(current))

        # Idempotent (a repeat with the same first event id answers as the first did).
        result: AppendResult = await self._run(op, "read")
        return result

    async def stream_read(
        self, stream: str, after_version: int = 0, limit: int = 1000
    ) -> list[StreamRecord]:
        q = bus_queries(self.schema)

        async def op(conn: Conn) -> list[StreamRecord]:
            cur = await conn.execute(
                q["stream_read"], {"stream": stream, "after": after_version, "limit": limit}
            )
            return [
                StreamRecord(
                    stream, int(v), str(i), str(n), bytes(p), json.loads(h), int(sv), float(t)
                )
                for v, i, n, p, h, sv, t in await cur.fetchall()
            ]

        result: list[StreamRecord] = await self._run(op, "read")
        return result

    async def stream_version(self, stream: str) -> int:
        q = bus_queries(self.schema)

        async def op(conn: Conn) -> int:
            cur = await conn.execute(q["stream_version"], {"stream": stream})
            row = await cur.fetchone()
            return int(row[0]) if row else 0

        result: int = await self._run(op, "read")
        return result

    async def snapshot_save(
        self,
        stream: str,
        version: int,
        state: bytes,
        schema_version: int = 1,
        now: float | None = None,
    ) -> None:
        q = bus_queries(self.schema)
        params = {
            "stream": stream,
            "version": version,
            "state": state,
            "sv": schema_version,
            "now": _f(now),
        }

        async def op(conn: Conn) -> None:
            await conn.execute(q["snapshot_save"], params)

        await self._run(op, "read")

    async def snapshot_load(self, stream: str) -> SnapshotRecord | None:
        q = bus_queries(self.schema)

        async def op(conn: Conn) -> SnapshotRecord | None:
            cur = await conn.execute(q["snapshot_load"], {"stream": stream})
            row = await cur.fetchone()
            if row is None:
                return None
            return SnapshotRecord(stream, int(row[0]), bytes(row[1]), int(row[2]), float(row[3]))

        result: SnapshotRecord | None = await self._run(op, "read")
        return result

    async def stream_prune(self, before: float, limit: int = 1000) -> int:
        q = bus_queries(self.schema)

        async def op(conn: Conn) -> int:
            cur = await conn.execute(q["stream_prune"], {"before": before, "limit": limit})
            return int(cur.rowcount)

        result: int = await self._run(op, "stale")
        return result
