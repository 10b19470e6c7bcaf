"""Fencing: a call with a fence that no longer holds the lease changes nothing, anywhere."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from conveyor.backends import Backend
from conveyor.domain.job import ClaimedJob, LeaseStatus
from conveyor.domain.states import JobState

from ._support import T, error, job, normalized

#: One fenced call each: ``(backend, job_id, fence, now)`` -> whether it claimed to apply.
FencedCall = Callable[[Backend, str, int, float], Awaitable[bool]]


async def _complete(b: Backend, job_id: str, fence: int, now: float) -> bool:
    return await b.complete(job_id, fence, b"zombie result", now=now)


async def _fail_dead(b: Backend, job_id: str, fence: int, now: float) -> bool:
    return await b.fail(job_id, fence, error(), retry_delay=None, now=now) is not None


async def _fail_retry(b: Backend, job_id: str, fence: int, now: float) -> bool:
    return await b.fail(job_id, fence, error(), retry_delay=10, now=now) is not None


async def _fail_cancel(b: Backend, job_id: str, fence: int, now: float) -> bool:
    state = await b.fail(
        job_id, fence, error(), retry_delay=None, now=now, terminal=JobState.CANCELLED
    )
    return state is not None


async def _release(b: Backend, job_id: str, fence: int, now: float) -> bool:
    return await b.release(job_id, fence, now=now)


async def _heartbeat(b: Backend, job_id: str, fence: int, now: float) -> bool:
    [status] = await b.heartbeat("zombie", [(job_id, fence)], 600, now=now)
    assert status.id == job_id
    if not status.held:
        assert not status.cancel_requested
    return status.held


async def _progress(b: Backend, job_id: str, fence: int, now: float) -> bool:
    return await b.set_progress(job_id, fence, b"zombie progress", now=now)


CALLS: dict[str, FencedCall] = {
    "complete": _complete,
    "fail-dead": _fail_dead,
    "fail-retry": _fail_retry,
    "fail-cancel": _fail_cancel,
    "release": _release,
    "heartbeat": _heartbeat,
    "set_progress": _progress,
}
call_param = pytest.mark.parametrize("call", list(CALLS.values()), ids=list(CALLS))


async def _zombie_and_successor(backend: Backend) -> tuple[ClaimedJob, ClaimedJob]:
    """Worker A claims, its lease expires, recovery requeues, worker B claims again."""
    new = job(max_attempts=5)
    await backend.enqueue([new], now=T)
    [zombie] = await backend.claim("worker-a", ["default"], 1, 10, now=T)
    recovered = await backend.recover_expired(3, now=T + 11)
    assert [(r.id, r.state) for r in recovered] == [(new.id, JobState.QUEUED)]
    [successor] = await backend.claim("worker-b", ["default"], 1, 10, now=T + 12)
    assert successor.id == new.id and successor.fence > zombie.fence
    return zombie, successor


@call_param
async def test_zombie_cannot_touch_the_newer_attempt(backend: Backend, call: FencedCall) -> None:
    zombie, successor = await _zombie_and_successor(backend)
    before = await backend.get_job(zombie.id)
    assert not await call(backend, zombie.id, zombie.fence, T + 13)
    after = await backend.get_job(zombie.id)
    assert before is not None and after is not None
    assert normalized(after, keep_fence=True) == normalized(before, keep_fence=True)
    assert after.state is JobState.RUNNING
    assert after.lease_owner == "worker-b" and after.attempts == 2
    assert after.fence == successor.fence
    # The successor's own lease is intact and still works.
    assert await backend.complete(successor.id, successor.fence, b"ok", now=T + 14)


@call_param
async def test_stale_fence_after_job_finished_is_a_noop(backend: Backend, call: FencedCall) -> None:
    new = job()
    await backend.enqueue([new], now=T)
    [claimed] = await backend.claim("w", ["default"], 1, 30, now=T)
    assert await backend.complete(new.id, claimed.fence, b"done", now=T + 1)
    before = await backend.get_job(new.id)
    assert not await call(backend, new.id, claimed.fence, T + 2)
    after = await backend.get_job(new.id)
    assert before is not None and after is not None
    assert normalized(after, keep_fence=True) == normalized(before, keep_fence=True)
    assert after.state is JobState.COMPLETED and after.result == b"done"


@call_param
async def test_wrong_fence_on_the_running_job_is_a_noop(backend: Backend, call: FencedCall) -> None:
    new = job()
    await backend.enqueue([new], now=T)
    [claimed] = await backend.claim("w", ["default"], 1, 30, now=T)
    before = await backend.get_job(new.id)
    for wrong in (claimed.fence + 1, claimed.fence - 1, 0, -1):
        assert not await call(backend, new.id, wrong, T + 2), wrong
    after = await backend.get_job(new.id)
    assert before is not None and after is not None
    assert normalized(after, keep_fence=True) == normalized(before, keep_fence=True)
    assert await backend.complete(new.id, claimed.fence, None, now=T + 3)


@call_param
async def test_fenced_calls_on_a_waiting_job_are_noops(backend: Backend, call: FencedCall) -> None:
    new = job(max_attempts=3)
    await backend.enqueue([new], now=T)
    [claimed] = await backend.claim("w", ["default"], 1, 30, now=T)
    assert await backend.release(new.id, claimed.fence, now=T + 1)
    before = await backend.get_job(new.id)
    assert not await call(backend, new.id, claimed.fence, T + 2)
    after = await backend.get_job(new.id)
    assert before is not None and after is not None
    assert normalized(after, keep_fence=True) == normalized(before, keep_fence=True)
    assert after.state is JobState.QUEUED


@call_param
async def test_fenced_calls_on_an_unknown_job_are_noops(backend: Backend, call: FencedCall) -> None:
    assert not await call(backend, "0" * 32, 1, T)
    assert await backend.get_job("0" * 32) is None


async def test_zombie_heartbeat_reports_each_lease_separately(backend: Backend) -> None:
    zombie, successor = await _zombie_and_successor(backend)
    other = job()
    await backend.enqueue([other], now=T + 12)
    [mine] = await backend.claim("worker-a", ["default"], 1, 10, now=T + 12)
    statuses = await backend.heartbeat(
        "worker-a", [(zombie.id, zombie.fence), (mine.id, mine.fence)], 30, now=T + 13
    )
    assert statuses == [LeaseStatus(zombie.id, False, False), LeaseStatus(mine.id, True, False)]
    record = await backend.get_job(zombie.id)
    assert record is not None and record.lease_owner == "worker-b"
    assert record.fence == successor.fence
