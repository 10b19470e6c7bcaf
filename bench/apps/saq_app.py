"""SAQ: ``saq bench.apps.saq_app.settings`` (Redis or PostgreSQL)."""

from __future__ import annotations

from typing import Any

from saq import Queue

from bench.apps import concurrency, setting
from bench.recorder import echo as _echo
from bench.recorder import record


def make_queue() -> Queue:
    if setting("BACKEND") == "postgres":
        return Queue.from_url(setting("URL_SEARCH_PATH"), name=setting("NS"))
    return Queue.from_url(setting("URL"), name=setting("NS"))


queue = make_queue()


async def noop(ctx: Any, *, t: float) -> None:
    record(t)


async def echo(ctx: Any, *, x: str) -> Any:
    return _echo(x)


async def blob(ctx: Any, *, data: str) -> None:
    """Carries a payload; never run."""


settings = {
    "queue": queue,
    "functions": [noop, echo, blob],
    "concurrency": concurrency(),
}
