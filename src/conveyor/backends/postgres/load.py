"""Queue load for the PostgreSQL backend (autoscaling signals): one statement.

It reads the claim index (queued jobs), the scheduled index (the due ones) and the running
index, so its cost grows with the backlog of the queues asked about (a bitmap scan of the
partial indexes): fine every few seconds, not per job.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from conveyor.backends.capabilities.load import QueueLoad, ReportsLoad
from conveyor.backends.postgres.statements import render

if TYPE_CHECKING:
    from conveyor.backends.postgres.client import Conn

_LOAD_SQL = """
SELECT {now},
       array_agg(queue), array_agg(ready), array_agg(running), array_agg(oldest)
FROM (
    SELECT queue,
           count(*) FILTER (WHERE state <> 'running') AS ready,
           count(*) FILTER (WHERE state = 'running') AS running,
           min(run_at) FILTER (WHERE state <> 'running') AS oldest
    FROM {schema}.jobs
    WHERE (state = 'queued' OR (state = 'scheduled' AND run_at <= {now}) OR state = 'running')
      AND (%(queues)s::text[] IS NULL OR queue = ANY (%(queues)s::text[]))
    GROUP BY queue
) AS per_queue
"""


class PostgresLoad(ReportsLoad):
    """Mixed into :class:`~conveyor.backends.postgres.backend.PostgresBackend`."""

    schema: str

    if TYPE_CHECKING:  # provided by PostgresClient, which comes after this mixin

        async def _run(self, op: Any, retry: str | None = None) -> Any: ...

    async def queue_load(
        self, queues: Sequence[str] | None = None, now: float | None = None
    ) -> list[QueueLoad]:
        names = None if queues is None else list(dict.fromkeys(queues))
        sql = render(_LOAD_SQL, self.schema)
        params = {"now": None if now is None else float(now), "queues": names}

        async def op(conn: Conn) -> tuple[Any, ...]:
            cur = await conn.execute(sql, params)
            row = await cur.fetchone()
            assert row is not None
            return tuple(row)

        t, qs, ready, running, oldest = await self._run(op, "read")
        found = {
            q: (int(r), int(n), o)
            for q, r, n, o in zip(qs or [], ready or [], running or [], oldest or [], strict=True)
        }
        order = names if names is not None else sorted(found)
        out = []
        for q in order:
            r, n, o = found.get(q, (0, 0, None))
            out.append(QueueLoad(q, r, n, None if o is None else max(float(t) - float(o), 0.0)))
        return out
