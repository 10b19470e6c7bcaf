"""The defer capability for the SQLite backend: one fenced UPDATE in the writer's
transaction (see :mod:`conveyor.backends.capabilities.defer`)."""

from __future__ import annotations

import sqlite3
import time
from typing import TYPE_CHECKING, Protocol

from conveyor.backends.capabilities.defer import Defers

if TYPE_CHECKING:
    from conveyor.backends.sqlite.engine import Engine
    from conveyor.backends.sqlite.notify import Effects

_DEFER = """
UPDATE conveyor_jobs
SET state = CASE WHEN :delay <= 0 THEN 'queued' ELSE 'scheduled' END,
    run_at = :run_at, attempts = max(attempts - 1, 0), lease_owner = NULL, lease_until = NULL
WHERE id = :id AND state = 'running' AND fence = :fence
RETURNING queue
"""


class _EngineSource(Protocol):
    async def engine(self) -> Engine: ...


class SQLiteDefer(Defers):
    """Mixed into :class:`~conveyor.backends.sqlite.SQLiteBackend`."""

    factory: _EngineSource

    async def defer(self, job_id: str, fence: int, delay: float, now: float | None = None) -> bool:
        t = time.time() if now is None else now
        params = {"id": job_id, "fence": fence, "delay": delay, "run_at": t + max(delay, 0.0)}

        def write(conn: sqlite3.Connection, fx: Effects) -> bool:
            row = conn.execute(_DEFER, params).fetchone()
            if row is None:
                return False
            (fx.ready if delay <= 0 else fx.scheduled).add(row[0])
            return True

        engine = await self.factory.engine()
        return await engine.write(write)
