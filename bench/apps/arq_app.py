"""arq: ``arq bench.apps.arq_app.WorkerSettings``."""

from __future__ import annotations

from typing import Any, ClassVar

from arq.connections import RedisSettings

from bench.apps import concurrency, setting
from bench.recorder import echo as _echo
from bench.recorder import record

QUEUE = "arq:" + setting("NS")


async def noop(ctx: dict[str, Any], t: float) -> None:
    record(t)


async def echo(ctx: dict[str, Any], x: str) -> Any:
    return _echo(x)


async def blob(ctx: dict[str, Any], data: str) -> None:
    """Carries a payload; never run."""


def redis_settings() -> RedisSettings:
    return RedisSettings.from_dsn(setting("URL"))


class WorkerSettings:
    functions: ClassVar[list[Any]] = [noop, echo, blob]
    redis_settings = redis_settings()
    queue_name = QUEUE
    max_jobs = concurrency()
    poll_delay = float(setting("ARQ_POLL_DELAY", "0.5"))
