"""Contract of the queue-load capability (:class:`conveyor.backends.capabilities.ReportsLoad`),
every backend held to the memory reference: ready and running jobs per queue and the age of
the longest-waiting ready job, the signals an autoscaler reads."""

from __future__ import annotations

import pytest

from conveyor.backends import Backend
from conveyor.backends.capabilities import QueueLoad, ReportsLoad, capability_names

from .._support import T, error, job


def _load(backend: Backend) -> ReportsLoad:
    assert isinstance(backend, ReportsLoad), f"{type(backend).__name__} lacks queue_load"
    return backend


def _rounded(loads: list[QueueLoad]) -> list[tuple[str, int, int, float | None]]:
    return [
        (x.queue, x.ready, x.running, None if x.oldest_age is None else round(x.oldest_age, 3))
        for x in loads
    ]


async def test_every_backend_declares_the_capability(backend: Backend) -> None:
    assert "queue_load" in capability_names(backend)


async def test_an_empty_store(backend: Backend) -> None:
    load = _load(backend)
    assert await load.queue_load(now=T) == []
    assert await load.queue_load(["a", "b", "a"], now=T) == [QueueLoad("a"), QueueLoad("b")]


async def test_ready_running_and_the_oldest_age(backend: Backend) -> None:
    await backend.enqueue([job(queue="mail", run_at=T - 30), job(queue="mail")], now=T - 10)
    await backend.enqueue([job(queue="mail", priority=9)], now=T - 5)
    await backend.enqueue([job(queue="bulk")], now=T - 2)
    # Scheduled: one already due (ready, waiting since its run-at), one in the future (not).
    await backend.enqueue(
        [job(queue="bulk", run_at=T - 7, delay=None), job(queue="bulk", run_at=T + 60)],
        now=T - 20,
    )
    assert _rounded(await _load(backend).queue_load(now=T)) == [
        ("bulk", 2, 0, 7.0),
        ("mail", 3, 0, 30.0),
    ]
    # Claiming the highest priority job of "mail" moves it to running; the oldest stays.
    [claimed] = await backend.claim("w", ["mail"], 1, 30.0, now=T)
    assert claimed.priority == 9
    assert _rounded(await _load(backend).queue_load(["mail", "idle", "bulk"], now=T + 1)) == [
        ("mail", 2, 1, 31.0),
        ("idle", 0, 0, None),
        ("bulk", 2, 0, 8.0),
    ]


async def test_finished_and_blocked_jobs_are_not_load(backend: Backend) -> None:
    done, failed, waiting = job(), job(), job(blocked=True)
    await backend.enqueue([done, failed, waiting], now=T)
    for claimed in await backend.claim("w", ["default"], 2, 30.0, now=T):
        if claimed.id == done.id:
            assert await backend.complete(claimed.id, claimed.fence, None, now=T + 1)
        else:
            await backend.fail(claimed.id, claimed.fence, error(), retry_delay=None, now=T + 1)
    assert await _load(backend).queue_load(now=T + 2) == []
    assert await _load(backend).queue_load(["default"], now=T + 2) == [QueueLoad("default")]


@pytest.mark.parametrize("retry_delay", [0.0, 5.0])
async def test_a_retry_waits_from_its_new_run_at(backend: Backend, retry_delay: float) -> None:
    new = job()
    await backend.enqueue([new], now=T)
    [claimed] = await backend.claim("w", ["default"], 1, 30.0, now=T + 1)
    await backend.fail(claimed.id, claimed.fence, error(), retry_delay=retry_delay, now=T + 2)
    [load] = await _load(backend).queue_load(["default"], now=T + 10)
    assert (load.ready, load.running) == (1, 0)
    assert load.oldest_age == pytest.approx(10 - 2 - retry_delay, abs=1e-3)
