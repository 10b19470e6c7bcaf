"""Queue load for the Redis backend (autoscaling signals): one ``load.lua`` call per queue.

Each queue is read atomically by its own script call (the calls go out together); the set of
queues, when none are named, comes from the ``queues`` set of every queue ever used.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from conveyor.backends.capabilities.load import QueueLoad, ReportsLoad
from conveyor.backends.redis.codec import opt_num
from conveyor.backends.redis.connect import translate_errors

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from conveyor.backends.redis.scripts import ScriptArg


class RedisLoad(ReportsLoad):
    """Mixed into :class:`~conveyor.backends.redis.backend.RedisBackend`."""

    url: str
    prefix: str
    base: str
    client: Redis

    if TYPE_CHECKING:  # provided by RedisBackend

        async def _run(
            self, name: str, args: Sequence[ScriptArg], base: str | None = None
        ) -> Any: ...

        def _queue_base(self, queue: str) -> str: ...

    async def queue_load(
        self, queues: Sequence[str] | None = None, now: float | None = None
    ) -> list[QueueLoad]:
        if queues is None:
            with translate_errors(self.url, self.prefix):
                members = await self.client.smembers(self.base + "queues")
            names = sorted(m.decode() if isinstance(m, bytes) else m for m in members)
        else:
            names = list(dict.fromkeys(queues))
        replies = await asyncio.gather(
            *(self._run("load", [q, opt_num(now)], self._queue_base(q)) for q in names)
        )
        out = []
        for q, (ready, running, age) in zip(names, replies, strict=True):
            load = QueueLoad(q, int(ready), int(running), float(age) if age else None)
            if queues is not None or load.ready or load.running:
                out.append(load)
        return out
