"""Taskiq with taskiq-redis: ``taskiq worker bench.apps.taskiq_app:broker``."""

from __future__ import annotations

from typing import Any

from taskiq import AsyncBroker
from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

from bench.apps import results_wanted, setting
from bench.recorder import echo as _echo
from bench.recorder import record


def make_broker() -> AsyncBroker:
    # RedisStreamBroker is the broker taskiq-redis recommends (acknowledgements).
    made: AsyncBroker = RedisStreamBroker(url=setting("URL"), queue_name=setting("NS"))
    if results_wanted():
        made = made.with_result_backend(RedisAsyncResultBackend(redis_url=setting("URL")))
    return made


broker = make_broker()


@broker.task(task_name="noop")
async def noop(t: float) -> None:
    record(t)


@broker.task(task_name="echo")
async def echo(x: str) -> Any:
    return _echo(x)


@broker.task(task_name="blob")
async def blob(data: str) -> None:
    """Carries a payload; never run."""
