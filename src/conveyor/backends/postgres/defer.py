"""The defer capability for the PostgreSQL backend: one fenced UPDATE (see
:mod:`conveyor.backends.capabilities.defer`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conveyor.backends.capabilities.defer import Defers
from conveyor.backends.postgres.statements import render

if TYPE_CHECKING:
    from conveyor.backends.postgres.client import Conn
    from conveyor.backends.postgres.wake import Wakeups

_DEFER = """
WITH clock AS (SELECT {now} AS now),
upd AS (
    UPDATE {schema}.jobs j
    SET state = CASE WHEN %(delay)s::float8 <= 0 THEN 'queued' ELSE 'scheduled' END,
        run_at = c.now + greatest(%(delay)s::float8, 0),
        attempts = greatest(j.attempts - 1, 0), lease_owner = NULL, lease_until = NULL
    FROM clock c
    WHERE j.id = %(id)s AND j.fence = %(fence)s AND j.state = 'running'
    RETURNING j.queue
)
SELECT queue, CASE WHEN %(channel)s::text IS NOT NULL THEN pg_notify(%(channel)s, queue) END
FROM upd
"""


class PostgresDefer(Defers):
    """Mixed into :class:`~conveyor.backends.postgres.backend.PostgresBackend`."""

    schema: str
    wake: Wakeups

    if TYPE_CHECKING:  # provided by PostgresClient, which comes after this mixin

        async def _run(self, op: Any, retry: str | None = None) -> Any: ...

    async def defer(self, job_id: str, fence: int, delay: float, now: float | None = None) -> bool:
        sql = render(_DEFER, self.schema)
        params = {
            "id": job_id,
            "fence": fence,
            "delay": delay,
            "now": now,
            "channel": self.wake.allow_jobs_any(),
        }

        async def op(conn: Conn) -> list[tuple[Any, ...]]:
            cur = await conn.execute(sql, params)
            return await cur.fetchall()

        rows: list[tuple[Any, ...]] = await self._run(op, "stale")
        if rows:
            self.wake.wake_jobs([rows[0][0]])
        return bool(rows)
