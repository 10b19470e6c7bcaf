"""The browsing capability for SQLite: keyset pages and capped counts over the 0003 indexes,
and the throughput counters table. Reads run on the reader thread, writes in the writer's
transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from conveyor.backends.capabilities.browse import (
    BrowseQuery,
    JobBrowser,
    StateCount,
    ThroughputRow,
)
from conveyor.backends.sqlite.queries import JOB_COLUMNS, row_to_record
from conveyor.domain.job import JobRecord
from conveyor.domain.states import JobState

if TYPE_CHECKING:
    from conveyor.backends.sqlite.engine import Engine

# List pages do not show logs: leave the (possibly long) column out.
_COLUMNS = JOB_COLUMNS.replace(" logs,", " '' AS logs,")
_STATES = [s.value for s in JobState]


class _EngineSource(Protocol):
    async def engine(self) -> Engine: ...


def _page(conn: sqlite3.Connection, q: BrowseQuery) -> list[JobRecord]:
    conds: list[str] = []
    params: list[Any] = []
    for column, value in (("queue", q.queue), ("task", q.task), ("error_code", q.error_code)):
        if value is not None:
            conds.append(f"{column} = ?")
            params.append(value)
    if q.before is not None:
        conds.append("id < ?")
        params.append(q.before)
    if q.after is not None:
        conds.append("id > ?")
        params.append(q.after)
    order = "ASC" if q.after is not None else "DESC"
    states: list[str | None]
    if q.states is not None:
        states = [JobState(s).value for s in dict.fromkeys(q.states)]
    elif q.error_code is not None:
        states = [*_STATES]
    elif q.queue is not None or q.task is not None:
        states = [*_STATES]  # one index range per state, merged below
    else:
        states = [None]  # the primary key's order
    rows: list[tuple[Any, ...]] = []
    for state in states:
        # State literals (enum values) keep the partial dead-letter index usable.
        where = [*conds, f"state = '{state}'"] if state is not None else conds
        sql = (
            f"SELECT {_COLUMNS} FROM conveyor_jobs WHERE {' AND '.join(where) or '1'} "
            f"ORDER BY id {order} LIMIT ?"
        )
        rows += conn.execute(sql, [*params, q.limit]).fetchall()
    rows.sort(key=lambda r: str(r[0]), reverse=order == "DESC")
    rows = rows[: q.limit]
    if order == "ASC":
        rows.reverse()
    return [row_to_record(r) for r in rows]


_QUEUES = """
WITH RECURSIVE q(name) AS (
    SELECT min(queue) FROM conveyor_jobs
    UNION ALL
    SELECT (SELECT min(queue) FROM conveyor_jobs WHERE queue > q.name) FROM q
    WHERE q.name IS NOT NULL
)
SELECT name FROM q WHERE name IS NOT NULL
"""


def _counts(conn: sqlite3.Connection, cap: int) -> list[StateCount]:
    out: list[StateCount] = []
    queues = [str(r[0]) for r in conn.execute(_QUEUES).fetchall()]
    for queue in sorted(queues):
        for state in sorted(_STATES):
            (n,) = conn.execute(
                "SELECT count(*) FROM (SELECT 1 FROM conveyor_jobs "
                f"WHERE queue = ? AND state = '{state}' LIMIT ?)",
                (queue, cap + 1),
            ).fetchone()
            if n:
                out.append(StateCount(queue, JobState(state), min(n, cap), n <= cap))
    return out


def _oldest(conn: sqlite3.Connection) -> dict[str, float]:
    out: dict[str, float] = {}
    queue: str | None = ""
    while True:  # each queue with queued jobs, then each priority level in it: index seeks
        row = conn.execute(
            "SELECT min(queue) FROM conveyor_jobs WHERE state = 'queued' AND queue > ?",
            (queue,),
        ).fetchone()
        queue = None if row is None else row[0]
        if queue is None:
            return out
        prio: int | None = None
        while True:
            row = conn.execute(
                "SELECT priority, run_at FROM conveyor_jobs WHERE state = 'queued' AND queue = ?"
                + ("" if prio is None else " AND priority < ?")
                + " ORDER BY priority DESC, run_at LIMIT 1",
                (queue,) if prio is None else (queue, prio),
            ).fetchone()
            if row is None:
                break
            prio = int(row[0])
            seen = out.get(queue)
            out[queue] = float(row[1]) if seen is None else min(seen, float(row[1]))


class SQLiteBrowser(JobBrowser):
    """Mixed into :class:`~conveyor.backends.sqlite.SQLiteBackend`."""

    factory: _EngineSource

    async def browse_jobs(self, query: BrowseQuery) -> list[JobRecord]:
        if query.limit <= 0:
            return []
        return await (await self.factory.engine()).read(lambda conn: _page(conn, query))

    async def count_states(self, cap: int = 10_000) -> list[StateCount]:
        return await (await self.factory.engine()).read(lambda conn: _counts(conn, cap))

    async def oldest_queued(self) -> dict[str, float]:
        return await (await self.factory.engine()).read(_oldest)

    async def job_for_key(self, key: str) -> str | None:
        def read(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT job_id FROM conveyor_idempotency_keys WHERE key = ?", (key,)
            ).fetchone()
            return None if row is None else str(row[0])

        return await (await self.factory.engine()).read(read)

    async def add_throughput(self, rows: Sequence[ThroughputRow]) -> None:
        params = [(r.bucket, r.queue, r.task, r.outcome, r.count, r.duration) for r in rows]
        if not params:
            return

        def write(conn: sqlite3.Connection, _effects: Any) -> None:
            conn.executemany(
                "INSERT INTO conveyor_throughput (bucket, queue, task, outcome, count, duration)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (bucket, queue, task, outcome) DO UPDATE"
                " SET count = count + excluded.count, duration = duration + excluded.duration",
                params,
            )

        await (await self.factory.engine()).write(write)

    async def read_throughput(self, since: float) -> list[ThroughputRow]:
        def read(conn: sqlite3.Connection) -> list[ThroughputRow]:
            rows = conn.execute(
                "SELECT bucket, queue, task, outcome, count, duration FROM conveyor_throughput"
                " WHERE bucket >= ? ORDER BY bucket, queue, task, outcome",
                (since,),
            ).fetchall()
            return [ThroughputRow(float(b), q, t, o, int(n), float(d)) for b, q, t, o, n, d in rows]

        return await (await self.factory.engine()).read(read)

    async def prune_throughput(self, before: float) -> int:
        def write(conn: sqlite3.Connection, _effects: Any) -> int:
            return conn.execute(
                "DELETE FROM conveyor_throughput WHERE bucket < ?", (before,)
            ).rowcount

        return await (await self.factory.engine()).write(write)
