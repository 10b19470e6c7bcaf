"""Procrastinate: ``defer_async``, ``batch_defer_async``, ``procrastinate worker``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.adapters.base import Adapter as Base
from bench.common import WorkerSpec

ARG = {"noop": "t", "blob": "data"}


class Adapter(Base):
    name = "procrastinate"
    distribution = "procrastinate"
    bulk_note = "Task.batch_defer_async (one statement per batch)"
    result_note = "no result API: jobs have no stored return value"
    config_note = {  # noqa: RUF012
        "c1": "procrastinate worker --concurrency 1",
        "high": "procrastinate worker --concurrency 100",
    }

    async def setup(self) -> None:
        from bench.apps import procrastinate_app

        self.mod = procrastinate_app
        self.tasks = {"noop": procrastinate_app.noop, "blob": procrastinate_app.blob}
        await procrastinate_app.app.open_async()
        await procrastinate_app.app.schema_manager.apply_schema_async()

    async def close(self) -> None:
        await self.mod.app.close_async()

    async def enqueue(self, task: str, arg: Any) -> None:
        await self.tasks[task].defer_async(**{ARG[task]: arg})

    async def enqueue_batch(self, task: str, args: Sequence[Any]) -> None:
        await self.tasks[task].batch_defer_async(*({ARG[task]: a} for a in args))

    def worker(self, mode: str) -> WorkerSpec:
        concurrency = "1" if mode == "c1" else "100"
        argv = [self.cli("procrastinate"), "--app", "bench.apps.procrastinate_app.app"]
        argv += ["--log-level", "error", "worker", "--concurrency", concurrency]
        return WorkerSpec(argv, self.config_note[mode])
