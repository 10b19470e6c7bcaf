"""arq: ``ArqRedis.enqueue_job``, ``Job.result``, ``arq WorkerSettings``."""

from __future__ import annotations

from typing import Any

from bench.adapters.base import Adapter as Base
from bench.common import WorkerSpec

#: poll_delay values tried (``bench.sweep``): arq sleeps this long after every fetch, even
#: when jobs are waiting, so its 0.5 s default caps max_jobs=1 at two jobs a second.
POLL_DELAYS = {"default": "0.5", "fast": "0.01"}
DEFAULT = "fast"


class Adapter(Base):
    name = "arq"
    distribution = "arq"
    results = True
    result_note = "Job.result(poll_delay=0.005) (polls)"

    async def setup(self) -> None:
        from arq import create_pool

        from bench.apps import arq_app

        self.queue = arq_app.QUEUE
        self.pool = await create_pool(arq_app.redis_settings(), default_queue_name=self.queue)

    async def close(self) -> None:
        await self.pool.aclose()

    async def enqueue(self, task: str, arg: Any) -> None:
        await self.pool.enqueue_job(task, arg)

    async def roundtrip(self, x: str) -> Any:
        job = await self.pool.enqueue_job("echo", x)
        assert job is not None
        return await job.result(timeout=30, poll_delay=0.005)

    def worker(self, mode: str) -> WorkerSpec:
        delay = POLL_DELAYS[self.spec.get("variant") or DEFAULT]
        jobs = "1" if mode == "c1" else "100"
        return WorkerSpec(
            [self.cli("arq"), "bench.apps.arq_app.WorkerSettings"],
            f"arq WorkerSettings (max_jobs={jobs}, poll_delay={delay})",
            {"BENCH_ARQ_POLL_DELAY": delay},
        )
