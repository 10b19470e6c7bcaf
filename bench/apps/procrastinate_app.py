"""Procrastinate: ``procrastinate --app bench.apps.procrastinate_app.app worker``."""

from __future__ import annotations

from procrastinate import App, PsycopgConnector

from bench.apps import setting
from bench.recorder import record

app = App(connector=PsycopgConnector(conninfo=setting("URL_SEARCH_PATH")))


@app.task(name="noop")
async def noop(t: float) -> None:
    record(t)


@app.task(name="blob")
async def blob(data: str) -> None:
    """Carries a payload; never run."""
