"""SAQ (Redis or PostgreSQL): ``Queue.enqueue``, ``Job.refresh(until_complete)``, ``saq``."""

from __future__ import annotations

from typing import Any

from bench.adapters.base import Adapter as Base
from bench.common import WorkerSpec

ARG = {"noop": "t", "echo": "x", "blob": "data"}


class Adapter(Base):
    name = "saq"
    distribution = "saq"
    results = True
    result_note = "Job.refresh(until_complete=…) (pub/sub or LISTEN)"
    config_note = {  # noqa: RUF012
        "c1": "saq settings (concurrency=1)",
        "high": "saq settings (concurrency=100)",
    }

    async def setup(self) -> None:
        from bench.apps import saq_app

        self.queue = saq_app.queue
        await self.queue.connect()

    async def close(self) -> None:
        await self.queue.disconnect()

    async def enqueue(self, task: str, arg: Any) -> None:
        await self.queue.enqueue(task, **{ARG[task]: arg})

    async def roundtrip(self, x: str) -> Any:
        job = await self.queue.enqueue("echo", x=x)
        assert job is not None
        # refresh() reads the status, then subscribes: a completion landing in between is
        # missed and the wait runs into its timeout. Re-check twice a second, as a user would.
        for _ in range(60):
            try:
                await job.refresh(until_complete=0.5)
            except TimeoutError:
                await job.refresh()
            if job.completed:
                return job.result
        raise TimeoutError(f"SAQ job {job.key} did not complete in 30s")

    def worker(self, mode: str) -> WorkerSpec:
        return WorkerSpec(
            [self.cli("saq"), "bench.apps.saq_app.settings", "--quiet"], self.config_note[mode]
        )
