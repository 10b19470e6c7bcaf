"""Celery (Redis broker): ``delay``, ``group``, ``AsyncResult.get``, ``celery worker``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.adapters.base import Adapter as Base
from bench.common import WorkerSpec

#: Worker pools tried for the "natural best" on two cores (``python -m bench.sweep``).
VARIANTS = {
    "solo": ["-P", "solo"],
    "prefork1": ["-P", "prefork", "-c", "1"],
    "prefork2": ["-P", "prefork", "-c", "2"],
    "prefork4": ["-P", "prefork", "-c", "4"],
    "threads10": ["-P", "threads", "-c", "10"],
    "threads100": ["-P", "threads", "-c", "100"],
}
DEFAULTS = {"c1": "solo", "high": "threads10"}
FLAGS = ["--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "ERROR"]


class Adapter(Base):
    name = "celery"
    distribution = "celery"
    bulk_note = "group(...).apply_async(): one publish per job over one connection"
    results = True
    result_note = "AsyncResult.get() (Redis result backend, pub/sub)"

    def setup(self) -> None:
        from bench.apps import celery_app

        self.mod = celery_app
        self.tasks = {"noop": celery_app.noop, "echo": celery_app.echo, "blob": celery_app.blob}

    def close(self) -> None:
        self.mod.app.close()

    def enqueue(self, task: str, arg: Any) -> None:
        self.tasks[task].delay(arg)

    def enqueue_batch(self, task: str, args: Sequence[Any]) -> None:
        from celery import group

        fn = self.tasks[task]
        group(fn.s(a) for a in args).apply_async()

    def roundtrip(self, x: str) -> Any:
        return self.mod.echo.delay(x).get(timeout=30)

    def worker(self, mode: str) -> WorkerSpec:
        name = self.spec.get("variant") or DEFAULTS[mode]
        argv = [self.cli("celery"), "-A", "bench.apps.celery_app", "worker", *VARIANTS[name]]
        return WorkerSpec([*argv, *FLAGS], f"celery worker {' '.join(VARIANTS[name])}")
