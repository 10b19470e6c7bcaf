"""The browsing capability for PostgreSQL: keyset pages and capped counts over the indexes of
migration 0003 (and ``jobs_state_idx``), and the throughput counters table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from conveyor.backends.capabilities.browse import (
    BrowseQuery,
    JobBrowser,
    StateCount,
    ThroughputRow,
)
from conveyor.backends.postgres.statements import JOB_COLUMNS, quote_ident, record_from_row
from conveyor.domain.job import JobRecord
from conveyor.domain.states import JobState

if TYPE_CHECKING:
    from conveyor.backends.postgres.client import Conn

_LOGS = JOB_COLUMNS[JOB_COLUMNS.index("(SELECT coalesce") : JOB_COLUMNS.index("j.trace_id")]
# List pages do not show logs: no subquery per row.
_COLUMNS = JOB_COLUMNS.replace(_LOGS, "'[]'::json, ")
_STATES = sorted(s.value for s in JobState)

# Queues present, by a loose index scan of jobs_queue_state_idx (one probe per queue).
_QUEUES = """
WITH RECURSIVE q(name) AS (
    (SELECT queue FROM {t} ORDER BY queue LIMIT 1)
    UNION ALL
    SELECT (SELECT queue FROM {t} WHERE queue > q.name ORDER BY queue LIMIT 1) FROM q
    WHERE q.name IS NOT NULL
)
SELECT name FROM q WHERE name IS NOT NULL
"""


class PostgresBrowser(JobBrowser):
    """Mixed into :class:`~conveyor.backends.postgres.backend.PostgresBackend`."""

    schema: str

    if TYPE_CHECKING:  # provided by PostgresClient, which comes after this mixin

        async def _run(self, op: Any, retry: str | None = None) -> Any: ...

    def _t(self, name: str = "jobs") -> str:
        return f"{quote_ident(self.schema)}.{name}"

    async def _rows(self, sql: str, params: Sequence[Any] | dict[str, Any]) -> list[Any]:
        async def op(conn: Conn) -> list[Any]:
            cur = await conn.execute(sql.encode(), params)
            return await cur.fetchall()

        rows: list[Any] = await self._run(op, "read")
        return rows

    async def browse_jobs(self, query: BrowseQuery) -> list[JobRecord]:
        q = query
        if q.limit <= 0:
            return []
        conds: list[str] = []
        params: dict[str, Any] = {"limit": int(q.limit)}
        if q.queue is not None:
            conds.append("j.queue = %(queue)s")
            params["queue"] = q.queue
        if q.task is not None:
            conds.append("j.task = %(task)s")
            params["task"] = q.task
        if q.error_code is not None:
            conds.append("(j.error ->> 'code') = %(code)s")
            params["code"] = q.error_code
        if q.before is not None:
            conds.append("j.id < %(before)s")
            params["before"] = q.before
        if q.after is not None:
            conds.append("j.id > %(after)s")
            params["after"] = q.after
        order = "ASC" if q.after is not None else "DESC"
        states: list[str | None]
        if q.states is not None:
            states = [JobState(s).value for s in dict.fromkeys(q.states)]
        elif q.error_code is not None:
            states = ["failed", "cancelled", "expired", "scheduled", "queued"]
        elif q.queue is not None or q.task is not None:
            states = list(_STATES)  # one index range per state, merged by the outer ORDER BY
        else:
            states = [None]
        parts = []
        for state in states:
            # State literals (enum values) keep the partial dead-letter index usable.
            where = [*conds, f"j.state = '{state}'"] if state is not None else conds
            parts.append(
                f"(SELECT {_COLUMNS} FROM {self._t()} j WHERE {' AND '.join(where) or 'true'} "
                f"ORDER BY j.id {order} LIMIT %(limit)s)"
            )
        sql = " UNION ALL ".join(parts).replace("{schema}", quote_ident(self.schema))
        if len(parts) > 1:
            sql = f"SELECT * FROM ({sql}) p ORDER BY 1 {order} LIMIT %(limit)s"
        records = [record_from_row(r) for r in await self._rows(sql, params)]
        if order == "ASC":
            records.reverse()
        return records

    async def count_states(self, cap: int = 10_000) -> list[StateCount]:
        queues = [str(r[0]) for r in await self._rows(_QUEUES.format(t=self._t()), ())]
        if not queues:
            return []
        parts = [
            f"SELECT %(q{i})s::text, '{state}', (SELECT count(*) FROM (SELECT 1 FROM {self._t()} "
            f"WHERE queue = %(q{i})s AND state = '{state}' LIMIT %(cap)s) s)"
            for i in range(len(queues))
            for state in _STATES
        ]
        params: dict[str, Any] = {f"q{i}": q for i, q in enumerate(queues)}
        params["cap"] = int(cap) + 1
        out = []
        for queue, state, n in await self._rows(" UNION ALL ".join(parts), params):
            if n:
                out.append(StateCount(queue, JobState(state), min(int(n), cap), int(n) <= cap))
        out.sort(key=lambda c: (c.queue, c.state.value))
        return out

    async def oldest_queued(self) -> dict[str, float]:
        # Each queue with queued jobs and each priority level in it, by probes of the claim
        # index (queue, priority DESC, run_at, id) WHERE state = 'queued'.
        sql = f"""
        WITH RECURSIVE lv(queue, priority, run_at) AS (
            (SELECT queue, priority, run_at FROM {self._t()} WHERE state = 'queued'
             ORDER BY queue, priority DESC, run_at LIMIT 1)
            UNION ALL
            SELECT n.* FROM lv, LATERAL (
                SELECT queue, priority, run_at FROM {self._t()}
                WHERE state = 'queued' AND (queue > lv.queue
                      OR (queue = lv.queue AND priority < lv.priority))
                ORDER BY queue, priority DESC, run_at LIMIT 1) n
        )
        SELECT queue, min(run_at) FROM lv GROUP BY queue
        """
        return {str(q): float(t) for q, t in await self._rows(sql, ())}

    async def job_for_key(self, key: str) -> str | None:
        sql = (
            f"SELECT id FROM {self._t()} WHERE idempotency_key = %s "
            "ORDER BY (state IN ('scheduled', 'queued', 'running', 'blocked', 'completed')) "
            "DESC, id DESC LIMIT 1"
        )
        rows = await self._rows(sql, (key,))
        return str(rows[0][0]) if rows else None

    async def add_throughput(self, rows: Sequence[ThroughputRow]) -> None:
        if not rows:
            return
        sql = (
            f"INSERT INTO {self._t('throughput')} AS t (bucket, queue, task, outcome, count, "
            "duration) SELECT * FROM unnest(%s::float8[], %s::text[], %s::text[], %s::text[], "
            "%s::int8[], %s::float8[]) ORDER BY 1, 2, 3, 4 "
            "ON CONFLICT (bucket, queue, task, outcome) DO UPDATE "
            "SET count = t.count + excluded.count, duration = t.duration + excluded.duration"
        )
        params = (
            [r.bucket for r in rows],
            [r.queue for r in rows],
            [r.task for r in rows],
            [r.outcome for r in rows],
            [r.count for r in rows],
            [r.duration for r in rows],
        )

        async def op(conn: Conn) -> None:
            await conn.execute(sql.encode(), params)

        await self._run(op, "stale")

    async def read_throughput(self, since: float) -> list[ThroughputRow]:
        sql = (
            f"SELECT bucket, queue, task, outcome, count, duration FROM {self._t('throughput')} "
            "WHERE bucket >= %s ORDER BY bucket, queue, task, outcome"
        )
        return [
            ThroughputRow(float(b), q, t, o, int(n), float(d))
            for b, q, t, o, n, d in await self._rows(sql, (float(since),))
        ]

    async def prune_throughput(self, before: float) -> int:
        sql = f"DELETE FROM {self._t('throughput')} WHERE bucket < %s"

        async def op(conn: Conn) -> int:
            cur = await conn.execute(sql.encode(), (float(before),))
            return int(cur.rowcount)

        n: int = await self._run(op, "stale")
        return n
