"""What a Celery user expects of the worker: a soft time limit raised inside the handler before
the hard timeout (async, thread and process handlers), process-mode children recycled after N
jobs or above a memory limit, and progress reported from a process-mode child."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from conveyor import ConfigurationError, ErrorCode, JobState, SoftTimeLimitExceeded
from conveyor.testing import memory_app, run_until_idle
from conveyor.worker import Worker, WorkerConfig


async def test_a_soft_limit_is_raised_inside_an_async_handler() -> None:
    app = memory_app()
    seen: list[str] = []

    @app.task(timeout=20, soft_timeout=0.2)
    async def slow() -> str:
        try:
            await asyncio.sleep(15)
        except SoftTimeLimitExceeded:
            seen.append("soft")
            await asyncio.sleep(0)  # still running normally afterwards
            return "saved partial work"
        return "finished"

    @app.task(timeout=20, soft_timeout=0.2)
    async def ignores_it() -> None:
        await asyncio.sleep(15)

    cleaned, failed = await slow.enqueue(), await ignores_it.enqueue()
    started = time.monotonic()
    await run_until_idle(app)
    assert time.monotonic() - started < 10  # long before the sleeps or the hard timeout
    assert await cleaned.result(1) == "saved partial work" and seen == ["soft"]
    info = await failed.info()
    assert info.state is JobState.FAILED
    assert info.error is not None and info.error.code == ErrorCode.TIMEOUT
    assert info.error.type == "SoftTimeLimitExceeded"


async def test_a_soft_limit_is_raised_inside_a_thread_handler() -> None:
    app = memory_app()

    @app.task(timeout=20, soft_timeout=0.2)
    def busy() -> str:
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                time.sleep(0.01)  # the exception lands between two sleeps
        except SoftTimeLimitExceeded:
            return "stopped early"
        return "ran to the end"

    handle = await busy.enqueue()
    await run_until_idle(app)
    assert await handle.result(1) == "stopped early"


async def test_a_soft_limit_is_raised_inside_a_process_handler() -> None:
    from tests.unit import proc_tasks

    await proc_tasks.app.reset()  # a shared module-level app: no other test's jobs
    handle = await proc_tasks.soft_spin.enqueue()
    await run_until_idle(proc_tasks.app)
    assert await handle.result(1) == "cleaned up"


async def test_a_soft_limit_must_be_shorter_than_the_timeout() -> None:
    app = memory_app()
    with pytest.raises(ConfigurationError, match="shorter than the timeout"):

        @app.task(timeout=1, soft_timeout=2)
        async def bad() -> None: ...

    with pytest.raises(ConfigurationError, match="greater than zero"):

        @app.task(soft_timeout=0)
        async def zero() -> None: ...


async def test_no_soft_limit_leaves_handlers_alone() -> None:
    app = memory_app()

    @app.task(timeout=5)
    async def quick() -> int:
        await asyncio.sleep(0.3)
        return 1

    handle = await quick.enqueue()
    await run_until_idle(app)
    assert await handle.result(1) == 1


def _process_worker(**config: Any) -> Worker:
    from tests.unit import proc_tasks

    app = proc_tasks.app
    return Worker(
        app,
        WorkerConfig(
            concurrency=1,
            burst=True,
            burst_waits_for_scheduled=False,
            poll_interval=0.05,
            maintenance_interval=3600.0,
            process_pool_size=1,
            **config,
        ),
    )


async def test_process_children_are_recycled_after_n_jobs() -> None:
    from tests.unit import proc_tasks

    await proc_tasks.app.reset()
    handles = [await proc_tasks.whoami.enqueue() for _ in range(5)]
    worker = _process_worker(max_jobs_per_child=2)
    await worker.run()
    pids = [await h.result(1) for h in handles]
    # One child at a time (pool size 1), retired after every second job: 3 children.
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]
    assert len(set(pids)) == 3
    assert worker.runner.processes.recycled == 2


async def test_process_children_are_recycled_above_a_memory_limit() -> None:
    from tests.unit import proc_tasks

    await proc_tasks.app.reset()
    light = await proc_tasks.whoami.enqueue()
    heavy = await proc_tasks.hog.enqueue(200)
    after = await proc_tasks.whoami.enqueue()
    worker = _process_worker(max_memory_per_child=150 * 2**20)
    await worker.run()
    first, second, third = [await h.result(1) for h in (light, heavy, after)]
    assert first == second  # below the limit after the light job: kept
    assert third != second  # the child that grew past it was replaced
    assert worker.runner.processes.recycled >= 1


async def test_progress_reported_in_a_child_process_reaches_the_store() -> None:
    from tests.unit import proc_tasks

    await proc_tasks.app.reset()
    seen: list[Any] = []
    off = proc_tasks.app.on("progress", lambda e: seen.append(e.progress))
    try:
        handle = await proc_tasks.reports.enqueue(3)
        await run_until_idle(proc_tasks.app)
        assert await handle.result(1) == 3
        assert await handle.progress() == {"step": 3, "of": 3}
        assert seen and seen[-1] == {"step": 3, "of": 3}
    finally:
        off()
