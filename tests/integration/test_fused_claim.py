"""The worker fuses a completion with the next claim where the backend can (Redis: one
script, one round trip; SQLite: one write transaction, one hand-off to the writer thread;
PostgreSQL: one pipeline, one round trip and one commit).

At concurrency 1 the claim loop is parked while the job runs, so the completion claims the
next job itself; these tests count the backend calls of a real in-process worker.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor, Worker, WorkerConfig
from conveyor.domain.states import JobState

try:
    from .test_postgres_support import URL as PG_URL
    from .test_postgres_support import fresh_schema, require_server
    from .test_redis_support import SHARED_URL, fresh_prefix, require_shared_server
except ImportError:  # tests/integration is not a package
    from test_postgres_support import URL as PG_URL  # type: ignore[no-redef]
    from test_postgres_support import (  # type: ignore[no-redef]
        fresh_schema,
        require_server,
    )
    from test_redis_support import (  # type: ignore[no-redef]
        SHARED_URL,
        fresh_prefix,
        require_shared_server,
    )

N = 60


@pytest.fixture(params=["sqlite", "redis", "postgres"])
async def app(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Conveyor]:
    if request.param == "redis":
        require_shared_server()
        app = Conveyor(SHARED_URL, backend_options={"prefix": fresh_prefix()})
    elif request.param == "postgres":
        require_server()
        options = {"schema": fresh_schema(), "auto_migrate": True}
        app = Conveyor(PG_URL, backend_options=options)
    else:
        app = Conveyor(f"sqlite:///{tmp_path}/jobs.db")
    try:
        yield app
    finally:
        factory = app.factory
        await app.close()
        await factory.destroy()  # type: ignore[attr-defined]


async def _count_calls(app: Conveyor) -> Counter[str]:
    backend = await app.backend()
    calls: Counter[str] = Counter()

    def wrap(name: str, method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def counted(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return await method(*args, **kwargs)

        return counted

    for name in ("claim", "complete", "complete_and_claim"):
        setattr(backend, name, wrap(name, getattr(backend, name)))
    return calls


async def _drain(app: Conveyor, config: WorkerConfig, done: asyncio.Event) -> None:
    worker = Worker(app, config)
    run = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(30):
            await done.wait()
    finally:
        worker.stop()
        await asyncio.wait_for(run, 30)


async def test_one_at_a_time_each_completion_claims_the_next(app: Conveyor) -> None:
    seen: list[int] = []
    done = asyncio.Event()

    @app.task()
    async def step(i: int) -> int:
        seen.append(i)
        if len(seen) == N:
            done.set()
        return i

    handles = await app.enqueue_many([step.call(i) for i in range(N)])
    calls = await _count_calls(app)
    await _drain(app, WorkerConfig(concurrency=1), done)

    assert sorted(seen) == list(range(N))  # each job ran once
    assert seen == list(range(N))  # in enqueue order: fusing keeps the claim order
    # The first claim comes from the claim loop; every later job from a fused completion.
    assert calls["complete_and_claim"] >= N - 1
    assert calls["claim"] <= 3
    assert calls["complete"] <= 1
    for i in range(0, N, N // 6):
        info = await handles[i].info()
        assert info is not None and info.state is JobState.COMPLETED
        assert await handles[i].result(timeout=5) == i


async def test_a_task_limit_turns_fusing_off_and_is_respected(app: Conveyor) -> None:
    running = 0
    peak = 0
    finished = 0
    done = asyncio.Event()

    @app.task(concurrency=1)
    async def capped(i: int) -> None:
        nonlocal running, peak, finished
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0)
        running -= 1
        finished += 1
        if finished == 20:
            done.set()

    await app.enqueue_many([capped.call(i) for i in range(20)])
    calls = await _count_calls(app)
    await _drain(app, WorkerConfig(concurrency=4), done)
    assert peak == 1
    assert calls["complete_and_claim"] == 0
