"""Waiting: ``wait_for_jobs`` wakes promptly and times out otherwise; ``wait_for_finish``.

These run on the real clock (the waits are real), measured with deadlines, never slept on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from conveyor.backends import Backend, CancelOutcome
from conveyor.domain.job import JobFilter
from conveyor.domain.states import JobState

from ._support import T, error, job

#: How soon a blocked waiter must notice a change made by another client (seconds). Generous
#: for a loaded 2-core CI box; a backend that only returns at its timeout fails it by far.
PROMPT = 1.0
LONG = 10.0


async def _assert_blocked(task: asyncio.Task[Any], for_seconds: float = 0.2) -> None:
    """The waiter has not returned after ``for_seconds`` (nothing happened to wake it)."""
    done, _ = await asyncio.wait({task}, timeout=for_seconds)
    assert not done, "the waiter returned although nothing changed"


async def _blocked_job_waiter(backend: Backend, queues: list[str]) -> asyncio.Task[None]:
    """A ``wait_for_jobs`` call that is blocked: a wake-up may be a stale hint about earlier
    activity (the protocol allows that), so a waiter that returns at once is started again, a
    few times; one must then stay blocked while nothing happens."""
    for _ in range(5):
        waiter = asyncio.create_task(backend.wait_for_jobs(queues, LONG))
        done, _ = await asyncio.wait({waiter}, timeout=0.2)
        if not done:
            return waiter
        waiter.result()
    raise AssertionError("wait_for_jobs keeps returning although no job is claimable")


async def _latency(task: asyncio.Task[Any], limit: float = LONG) -> float:
    start = time.monotonic()
    await asyncio.wait_for(asyncio.shield(task), limit)
    return time.monotonic() - start


async def test_wait_for_jobs_times_out_when_nothing_comes(backend: Backend) -> None:
    start = time.monotonic()
    await backend.wait_for_jobs(["default"], 0.3)
    elapsed = time.monotonic() - start
    assert 0.25 <= elapsed <= 0.3 + PROMPT


async def test_wait_for_jobs_returns_at_once_when_a_job_is_ready(backend: Backend) -> None:
    await backend.enqueue([job()])
    start = time.monotonic()
    await backend.wait_for_jobs(["other", "default"], LONG)
    assert time.monotonic() - start <= PROMPT


async def test_wait_for_jobs_wakes_on_enqueue_from_another_client(
    backend: Backend, other_backend: Backend
) -> None:
    waiter = await _blocked_job_waiter(backend, ["default"])
    try:
        await other_backend.enqueue([job()])
        assert await _latency(waiter) <= PROMPT
    finally:
        waiter.cancel()


async def test_wait_for_jobs_wakes_when_a_scheduled_job_comes_due(backend: Backend) -> None:
    await backend.enqueue([job(run_at=time.time() + 0.5)])
    start = time.monotonic()
    await backend.wait_for_jobs(["default"], LONG)
    assert time.monotonic() - start <= 0.5 + PROMPT


async def _running(backend: Backend, max_attempts: int = 3) -> tuple[str, int]:
    new = job(max_attempts=max_attempts)
    await backend.enqueue([new], now=T)
    [claimed] = await backend.claim("w", ["default"], 1, 30, now=T)
    return claimed.id, claimed.fence


async def _by_release(other: Backend, job_id: str, fence: int) -> None:
    assert await other.release(job_id, fence, now=T + 1)


async def _by_retry_now(other: Backend, job_id: str, fence: int) -> None:
    assert await other.fail(job_id, fence, error(), retry_delay=0, now=T + 1) is JobState.QUEUED


async def _by_recovery(other: Backend, job_id: str, fence: int) -> None:
    [recovered] = await other.recover_expired(3, now=T + 100)
    assert recovered.state is JobState.QUEUED


async def _by_dead_letter_retry(other: Backend, job_id: str, fence: int) -> None:
    await other.fail(job_id, fence, error(), retry_delay=None, now=T + 1)
    assert await other.retry_jobs(JobFilter(ids=(job_id,))) == [job_id]


PATHS: dict[str, Callable[[Backend, str, int], Awaitable[None]]] = {
    "release": _by_release,
    "retry-now": _by_retry_now,
    "recovery": _by_recovery,
    "dead-letter-retry": _by_dead_letter_retry,
}


@pytest.mark.parametrize("path", list(PATHS.values()), ids=list(PATHS))
async def test_wait_for_jobs_wakes_on_every_path_that_makes_a_job_ready(
    backend: Backend,
    other_backend: Backend,
    path: Callable[[Backend, str, int], Awaitable[None]],
) -> None:
    job_id, fence = await _running(other_backend)
    waiter = await _blocked_job_waiter(backend, ["default"])
    try:
        await path(other_backend, job_id, fence)
        assert await _latency(waiter) <= PROMPT
    finally:
        waiter.cancel()
    [claimed] = await backend.claim("w2", ["default"], 1, 30)
    assert claimed.id == job_id


# -- wait_for_finish -------------------------------------------------------------------------


async def test_wait_for_finish_returns_when_another_client_completes(
    backend: Backend, other_backend: Backend
) -> None:
    job_id, fence = await _running(other_backend)
    waiter = asyncio.create_task(backend.wait_for_finish(job_id, LONG))
    try:
        await _assert_blocked(waiter)
        assert await other_backend.complete(job_id, fence, b"done", now=T + 1)
        assert await _latency(waiter) <= PROMPT
    finally:
        waiter.cancel()
    record = waiter.result()
    assert record is not None
    assert record.state is JobState.COMPLETED and record.result == b"done"


async def test_wait_for_finish_sees_a_cancelled_waiting_job(
    backend: Backend, other_backend: Backend
) -> None:
    new = job(run_at=T + 3600)
    await backend.enqueue([new], now=T)
    waiter = asyncio.create_task(backend.wait_for_finish(new.id, LONG))
    try:
        await _assert_blocked(waiter)
        assert await other_backend.cancel(new.id, "no", now=T + 1) is CancelOutcome.CANCELLED
        assert await _latency(waiter) <= PROMPT
    finally:
        waiter.cancel()
    record = waiter.result()
    assert record is not None and record.state is JobState.CANCELLED


async def test_wait_for_finish_times_out_with_the_latest_record(backend: Backend) -> None:
    job_id, _ = await _running(backend)
    start = time.monotonic()
    record = await backend.wait_for_finish(job_id, 0.3)
    elapsed = time.monotonic() - start
    assert 0.25 <= elapsed <= 0.3 + PROMPT
    assert record is not None and record.state is JobState.RUNNING and record.id == job_id


async def test_wait_for_finish_of_a_finished_or_unknown_job(backend: Backend) -> None:
    job_id, fence = await _running(backend)
    await backend.fail(job_id, fence, error(), retry_delay=None, now=T + 1)
    start = time.monotonic()
    record = await backend.wait_for_finish(job_id, LONG)
    assert record is not None and record.state is JobState.FAILED
    assert await backend.wait_for_finish("0" * 32, LONG) is None
    assert time.monotonic() - start <= PROMPT
