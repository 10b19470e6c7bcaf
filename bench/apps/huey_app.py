"""Huey: ``huey_consumer bench.apps.huey_app.huey`` (Redis or SQLite)."""

from __future__ import annotations

from typing import Any

from huey import Huey, RedisHuey, SqliteHuey

from bench.apps import results_wanted, setting
from bench.recorder import echo as _echo
from bench.recorder import record


def make_huey() -> Huey:
    if setting("BACKEND") == "sqlite":
        return SqliteHuey(setting("NS"), filename=setting("SQLITE_PATH"))
    # notify_result: results are signalled with BLPOP instead of polled (lower latency).
    return RedisHuey(setting("NS"), url=setting("URL"), notify_result=results_wanted())


huey = make_huey()


@huey.task(name="noop")
def noop(t: float) -> None:
    record(t)


@huey.task(name="echo")
def echo(x: str) -> Any:
    return _echo(x)


@huey.task(name="blob")
def blob(data: str) -> None:
    """Carries a payload; never run."""
