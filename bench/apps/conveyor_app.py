"""Conveyor: ``python -m conveyor worker bench.apps.conveyor_app:app -c N``."""

from __future__ import annotations

from typing import Any

from bench.apps import setting
from bench.recorder import echo as _echo
from bench.recorder import record
from conveyor import Conveyor


def _app() -> Conveyor:
    backend = setting("BACKEND")
    options: dict[str, Any] = {}
    if backend == "redis":
        options["prefix"] = setting("NS")
    elif backend == "postgres":
        options["schema"] = setting("NS")
    return Conveyor(setting("URL"), backend_options=options)


app = _app()


@app.task(name="noop")
async def noop(t: float) -> None:
    """The no-op job: one record of its start."""
    record(t)


@app.task(name="echo")
async def echo(x: str) -> Any:
    """The end-to-end job: returns its argument."""
    return _echo(x)


@app.task(name="blob")
async def blob(data: str) -> None:
    """The memory-footprint job (never run): carries a 100 B or 1 KB string."""
