"""taskora parity odds and ends: the on_cancel cleanup hook, app-level worker events,
retention by count, per-task stall limits."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor, JobEvent, JobState, Retention, Worker, WorkerConfig
from conveyor.backends.memory import MemoryFactory
from conveyor.backends.memory.backend import MemoryBackend
from conveyor.testing import FakeClock, memory_app, run_until_idle
from conveyor.worker.payloads import recovery_stall_limit


async def until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_on_cancel_cleans_up_after_the_handler_stopped() -> None:
    app = memory_app(lease=1.0, heartbeat_interval=0.1)
    started = asyncio.Event()
    cleaned: list[Any] = []

    async def cleanup(ctx: Any, path: str) -> None:
        cleaned.append((ctx.job_id, path, ctx.cancelled, ctx.cancel_reason))

    @app.task(name="export", on_cancel=cleanup)
    async def export(path: str) -> None:
        started.set()
        await asyncio.sleep(3600)

    handle = await export.enqueue("/tmp/partial.csv")
    worker = Worker(app, WorkerConfig(poll_interval=0.05, scheduler=False))
    running = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(started.wait(), 10)
        await handle.cancel("user gave up")

        async def finished() -> bool:
            return (await handle.state()) is JobState.CANCELLED

        await until(finished)
    finally:
        worker.stop()
        await running
    assert cleaned == [(handle.id, "/tmp/partial.csv", True, "user gave up")]


async def test_a_failing_cleanup_hook_does_not_stop_the_cancellation() -> None:
    app = memory_app(lease=1.0, heartbeat_interval=0.1)
    started = asyncio.Event()

    def broken(ctx: Any) -> None:
        raise RuntimeError("cleanup failed")

    @app.task(name="wait", on_cancel=broken)
    async def wait() -> None:
        started.set()
        await asyncio.sleep(3600)

    handle = await wait.enqueue()
    worker = Worker(app, WorkerConfig(poll_interval=0.05, scheduler=False))
    running = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(started.wait(), 10)
        await handle.cancel()

        async def finished() -> bool:
            return (await handle.state()) is JobState.CANCELLED

        await until(finished)
    finally:
        worker.stop()
        await running


class _FlakyClaims(MemoryBackend):
    """A memory client whose first claim fails (the store briefly unreachable)."""

    failed = False

    async def claim(self, *args: Any, **kwargs: Any) -> Any:
        if not _FlakyClaims.failed:
            _FlakyClaims.failed = True
            raise ConnectionError("store unreachable")
        return await super().claim(*args, **kwargs)


class _FlakyFactory(MemoryFactory):
    def create(self) -> MemoryBackend:
        return _FlakyClaims(self.store)


async def test_app_level_worker_events() -> None:
    app = Conveyor("memory://", backend_factory=_FlakyFactory())
    seen: list[JobEvent] = []
    for kind in ("worker:ready", "worker:closing", "worker:error"):
        app.on(kind, seen.append)
    worker = await run_until_idle(app)
    kinds = [e.kind for e in seen]
    assert kinds == ["worker:ready", "worker:error", "worker:closing"], kinds
    assert {e.worker_id for e in seen} == {worker.id}
    assert seen[1].error_type == "ConnectionError" and seen[1].error_message == "store unreachable"


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_retention_by_count_keeps_the_newest(kind: str, tmp_path: Path) -> None:
    url = "memory://" if kind == "memory" else f"sqlite:///{tmp_path}/jobs.db"
    app = Conveyor(url, retention=Retention.build(completed_max_items=2, failed_max_items=0))

    @app.task(name="n")
    def n(i: int) -> int:
        if i < 0:
            raise ValueError("negative")
        return i

    handles = [await n.enqueue(i) for i in range(5)]
    bad = await n.enqueue(-1)
    worker = await run_until_idle(app)
    assert await worker.prune() == 4  # 3 completed beyond the 2 newest, 1 failed
    remaining = {j.id for j in await app.inspect.jobs(limit=100)}
    assert remaining == {handles[3].id, handles[4].id}
    assert bad.id not in remaining
    await app.close()


def test_retention_limits_are_checked() -> None:
    with pytest.raises(Exception, match="completed_max_items"):
        Retention(completed_max_items=-1)


async def test_per_task_stall_limits() -> None:
    clock = FakeClock()
    app = memory_app(clock=clock, max_stalls=0, lease=2.0, heartbeat_interval=0.5)
    ran: list[str] = []

    @app.task(name="fragile", max_stalls=0)
    def fragile() -> None:
        ran.append("fragile")

    @app.task(name="sturdy", max_stalls=2)
    def sturdy() -> None:
        ran.append("sturdy")

    first = await fragile.enqueue()
    second = await sturdy.enqueue()
    backend = await app.backend()
    claimed = await backend.claim("dead-worker", ["default"], 2, 2.0, clock.now())
    assert {c.id for c in claimed} == {first.id, second.id}
    clock.advance(5)  # the dead worker's leases expire
    # What the worker's maintenance passes to recovery: the highest limit (2), so both go back.
    limit = recovery_stall_limit(app.tasks, app.max_stalls)
    recovered = await backend.recover_expired(limit, clock.now())
    assert limit == 2 and {r.state for r in recovered} == {JobState.QUEUED}
    await run_until_idle(app)
    assert ran == ["sturdy"]
    info = await first.info()
    assert info.state is JobState.FAILED and info.error is not None
    assert info.error.code == "poison_message" and "stalled 1 times" in info.error.message
    assert (await second.info()).state is JobState.COMPLETED
