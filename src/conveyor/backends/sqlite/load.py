"""Queue load for the SQLite backend (autoscaling signals), one read on the read connection."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from conveyor.backends.capabilities.load import QueueLoad, ReportsLoad

if TYPE_CHECKING:
    from conveyor.backends.sqlite.engine import Engine

# One pass over the ready index (queued), the scheduled index (due) and the running index.
_LOAD_SQL = """
SELECT queue,
       sum(state <> 'running'),
       sum(state = 'running'),
       min(CASE WHEN state <> 'running' THEN run_at END)
FROM conveyor_jobs
WHERE (state = 'queued' OR (state = 'scheduled' AND run_at <= ?) OR state = 'running')
  AND (? IS NULL OR queue IN (SELECT value FROM json_each(?)))
GROUP BY queue
"""


class _EngineSource(Protocol):
    async def engine(self) -> Engine: ...


class SQLiteLoad(ReportsLoad):
    """Mixed into :class:`~conveyor.backends.sqlite.SQLiteBackend`."""

    factory: _EngineSource

    async def queue_load(
        self, queues: Sequence[str] | None = None, now: float | None = None
    ) -> list[QueueLoad]:
        t = time.time() if now is None else float(now)
        names = None if queues is None else list(dict.fromkeys(queues))
        wanted = None if names is None else json.dumps(names)

        def read(conn: sqlite3.Connection) -> list[tuple[str, int, int, float | None]]:
            rows = conn.execute(_LOAD_SQL, (t, wanted, wanted)).fetchall()
            return [(str(q), int(r), int(n), o) for q, r, n, o in rows]

        found = {q: (r, n, o) for q, r, n, o in await (await self.factory.engine()).read(read)}
        order = names if names is not None else sorted(found)
        out = []
        for q in order:
            ready, running, oldest = found.get(q, (0, 0, None))
            age = None if oldest is None else max(t - float(oldest), 0.0)
            out.append(QueueLoad(q, ready, running, age))
        return out
