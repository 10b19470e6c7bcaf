"""Huey (RedisHuey or SqliteHuey): calling the task enqueues it, ``Result.get``, consumer."""

from __future__ import annotations

from typing import Any

from bench.adapters.base import Adapter as Base
from bench.common import WorkerSpec

#: Worker types and counts tried for the "natural best" on two cores (``bench.sweep``).
VARIANTS = {
    "thread1": ["-w", "1", "-k", "thread"],
    "process1": ["-w", "1", "-k", "process"],
    "process2": ["-w", "2", "-k", "process"],
    "process4": ["-w", "4", "-k", "process"],
    "thread8": ["-w", "8", "-k", "thread"],
    "thread32": ["-w", "32", "-k", "thread"],
}
DEFAULTS = {"c1": "thread1", "high": "thread32"}


class Adapter(Base):
    name = "huey"
    distribution = "huey"
    results = True
    result_note = "Result.get(blocking=True) (BLPOP with notify_result on Redis; polls on SQLite)"

    def setup(self) -> None:
        from bench.apps import huey_app

        self.mod = huey_app
        self.tasks = {"noop": huey_app.noop, "echo": huey_app.echo, "blob": huey_app.blob}

    def close(self) -> None:
        storage = self.mod.huey.storage
        pool = getattr(storage, "pool", None)
        if pool is not None:
            pool.disconnect()
        close = getattr(storage, "close", None)
        if close is not None:
            close()

    def enqueue(self, task: str, arg: Any) -> None:
        self.tasks[task](arg)

    def roundtrip(self, x: str) -> Any:
        return self.mod.echo(x).get(blocking=True, timeout=30)

    def worker(self, mode: str) -> WorkerSpec:
        name = self.spec.get("variant") or DEFAULTS[mode]
        argv = [self.cli("huey_consumer"), "bench.apps.huey_app.huey", *VARIANTS[name], "-q"]
        return WorkerSpec(argv, f"huey_consumer {' '.join(VARIANTS[name])}")
