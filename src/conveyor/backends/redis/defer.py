"""The defer capability for the Redis backend: one Lua script, ``lua/defer.lua`` (see
:mod:`conveyor.backends.capabilities.defer`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from uuid import uuid4

from conveyor.backends.capabilities.defer import Defers
from conveyor.backends.redis.codec import opt_num

if TYPE_CHECKING:
    from conveyor.backends.redis.scripts import ScriptArg


class RedisDefer(Defers):
    """Mixed into :class:`~conveyor.backends.redis.backend.RedisBackend`."""

    if TYPE_CHECKING:

        async def _run(self, name: str, args: Sequence[ScriptArg]) -> Any: ...

    async def defer(self, job_id: str, fence: int, delay: float, now: float | None = None) -> bool:
        token = uuid4().hex[:16]  # see write_token in backend.py
        args: list[ScriptArg] = [job_id, str(fence), repr(float(delay)), opt_num(now), token]
        return bool(await self._run("defer", args))
