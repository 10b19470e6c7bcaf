"""Celery: ``celery -A bench.apps.celery_app worker``."""

from __future__ import annotations

from typing import Any

from celery import Celery

from bench.apps import results_wanted, setting
from bench.recorder import echo as _echo
from bench.recorder import record

_url = setting("URL")
app = Celery("bench", broker=_url, backend=_url if results_wanted() else None)
app.conf.update(
    task_default_queue=setting("NS"),
    task_ignore_result=not results_wanted(),
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="noop")
def noop(t: float) -> None:
    record(t)


@app.task(name="echo", ignore_result=False)
def echo(x: str) -> Any:
    return _echo(x)


@app.task(name="blob")
def blob(data: str) -> None:
    """Carries a payload; never run."""
