"""Taskiq with taskiq-redis: ``task.kiq``, ``TaskiqTask.wait_result``, ``taskiq worker``."""

from __future__ import annotations

from typing import Any

from bench.adapters.base import Adapter as Base
from bench.common import WorkerSpec


class Adapter(Base):
    name = "taskiq"
    distribution = "taskiq"
    results = True
    result_note = "TaskiqTask.wait_result(check_interval=0.005) (polls the result backend)"
    config_note = {  # noqa: RUF012
        "c1": "taskiq worker --workers 1 --max-async-tasks 1 (RedisStreamBroker)",
        "high": "taskiq worker --workers 1 --max-async-tasks 100 (RedisStreamBroker)",
    }

    async def setup(self) -> None:
        from bench.apps import taskiq_app

        self.mod = taskiq_app
        self.tasks = {"noop": taskiq_app.noop, "echo": taskiq_app.echo, "blob": taskiq_app.blob}
        await taskiq_app.broker.startup()

    async def close(self) -> None:
        await self.mod.broker.shutdown()

    async def enqueue(self, task: str, arg: Any) -> None:
        await self.tasks[task].kiq(arg)

    async def roundtrip(self, x: str) -> Any:
        task = await self.mod.echo.kiq(x)
        result = await task.wait_result(check_interval=0.005, timeout=30)
        return result.return_value

    def worker(self, mode: str) -> WorkerSpec:
        tasks = "1" if mode == "c1" else "100"
        argv = [self.cli("taskiq"), "worker", "bench.apps.taskiq_app:broker", "--workers", "1"]
        argv += ["--max-async-tasks", tasks, "--log-level", "ERROR"]
        return WorkerSpec(argv, self.config_note[mode])
