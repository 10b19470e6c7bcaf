"""Conveyor: ``task.enqueue``, ``app.enqueue_many``, ``handle.result``, ``conveyor worker``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.adapters.base import Adapter as Base
from bench.common import WorkerSpec

APP = "bench.apps.conveyor_app:app"


class Adapter(Base):
    name = "conveyor"
    distribution = "conveyor"
    bulk_note = "app.enqueue_many (one script / statement per batch)"
    results = True
    result_note = "handle.result() (pub/sub or LISTEN wake-up)"
    config_note = {  # noqa: RUF012
        "c1": "conveyor worker -c 1",
        "high": "conveyor worker -c 100 (one process, asyncio)",
    }

    async def setup(self) -> None:
        from bench.apps import conveyor_app

        self.mod = conveyor_app
        self.tasks = {
            "noop": conveyor_app.noop,
            "echo": conveyor_app.echo,
            "blob": conveyor_app.blob,
        }
        await conveyor_app.app.migrate()
        await conveyor_app.app.backend()

    async def close(self) -> None:
        await self.mod.app.close()

    async def enqueue(self, task: str, arg: Any) -> None:
        await self.tasks[task].enqueue(arg)

    async def enqueue_batch(self, task: str, args: Sequence[Any]) -> None:
        fn = self.tasks[task]
        await self.mod.app.enqueue_many([fn.call(a) for a in args])

    async def roundtrip(self, x: str) -> Any:
        handle = await self.mod.echo.enqueue(x)
        return await handle.result(timeout=30)

    def worker(self, mode: str) -> WorkerSpec:
        concurrency = "1" if mode == "c1" else "100"
        argv = [self.python, "-m", "conveyor", "worker", APP, "-c", concurrency]
        return WorkerSpec([*argv, "--log-level", "critical"], self.config_note[mode])
