"""Fencing: a call with a fence that no longer holds the lease changes nothing, anywhere.

One rule on top (section "repeats"): the repeat of a fenced write that took effect under the
same fence (a client that lost the reply asks again) answers the outcome it stored, and
changes nothing.
"""

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
named_call_param = pytest.mark.parametrize("name", list(CALLS))


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


@named_call_param
async def test_stale_fence_after_job_finished_is_a_noop(backend: Backend, name: str) -> None:
    new = job()
    await backend.enqueue([new], now=T)
    [claimed] = await backend.claim("w", ["default"], 1, 30, now=T)
    assert await backend.complete(new.id, claimed.fence, b"done", now=T + 1)
    before = await backend.get_job(new.id)
    # Only a repeat of the completion answers as it did (and still changes nothing).
    repeat = name == "complete"
    assert await CALLS[name](backend, new.id, claimed.fence, T + 2) is repeat
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


@named_call_param
async def test_fenced_calls_on_a_waiting_job_are_noops(backend: Backend, name: str) -> None:
    new = job(max_attempts=3)
    await backend.enqueue([new], now=T)
    [claimed] = await backend.claim("w", ["default"], 1, 30, now=T)
    assert await backend.release(new.id, claimed.fence, now=T + 1)
    before = await backend.get_job(new.id)
    # Only a repeat of the hand-back answers as it did (and still changes nothing).
    repeat = name == "release"
    assert await CALLS[name](backend, new.id, claimed.fence, T + 2) is repeat
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


# -- repeats ----------------------------------------------------------------------------------


async def _claimed(backend: Backend, **fields: object) -> ClaimedJob:
    new = job(**fields)
    await backend.enqueue([new], now=T)
    [claimed] = await backend.claim("w", ["default"], 1, 30, now=T)
    return claimed


async def test_a_repeated_completion_answers_true_and_changes_nothing(backend: Backend) -> None:
    claimed = await _claimed(backend)
    assert await backend.complete(claimed.id, claimed.fence, b"first", now=T + 1)
    before = await backend.get_job(claimed.id)
    assert await backend.complete(claimed.id, claimed.fence, b"first", now=T + 2)
    assert await backend.complete(claimed.id, claimed.fence, b"other", now=T + 3)
    after = await backend.get_job(claimed.id)
    assert before is not None and after is not None
    assert normalized(after, keep_fence=True) == normalized(before, keep_fence=True)
    assert after.result == b"first"


async def test_a_repeated_fused_completion_answers_true(backend: Backend) -> None:
    claimed = await _claimed(backend)
    assert await backend.complete(claimed.id, claimed.fence, None, now=T + 1)
    done, more = await backend.complete_and_claim(
        claimed.id, claimed.fence, None, "w", ["default"], 1, 30, now=T + 2
    )
    assert done and more == []


@pytest.mark.parametrize(
    ("delay", "terminal", "state"),
    [
        (None, JobState.FAILED, JobState.FAILED),
        (None, JobState.CANCELLED, JobState.CANCELLED),
        (0.0, JobState.FAILED, JobState.QUEUED),
        (-1.0, JobState.FAILED, JobState.QUEUED),
        (30.0, JobState.FAILED, JobState.SCHEDULED),
    ],
    ids=["dead", "cancelled", "retry-now", "retry-past", "retry-later"],
)
async def test_a_repeated_failure_answers_the_state_it_wrote(
    backend: Backend, delay: float | None, terminal: JobState, state: JobState
) -> None:
    claimed = await _claimed(backend, max_attempts=3)
    err = error(at=T + 1)
    first = await backend.fail(
        claimed.id, claimed.fence, err, retry_delay=delay, now=T + 1, terminal=terminal
    )
    assert first is state
    before = await backend.get_job(claimed.id)
    again = await backend.fail(
        claimed.id, claimed.fence, err, retry_delay=delay, now=T + 2, terminal=terminal
    )
    assert again is state
    after = await backend.get_job(claimed.id)
    assert before is not None and after is not None
    assert normalized(after, keep_fence=True) == normalized(before, keep_fence=True)
    # Another write under the same fence is not a repeat: the lease is gone.
    other = error(message="another", at=T + 1)
    assert (
        await backend.fail(claimed.id, claimed.fence, other, retry_delay=delay, now=T + 3) is None
    )
    assert not await backend.complete(claimed.id, claimed.fence, None, now=T + 3)


async def test_a_repeated_retry_later_answers_scheduled_after_the_job_came_due(
    backend: Backend,
) -> None:
    claimed = await _claimed(backend, max_attempts=3)
    err = error(at=T + 1)
    assert await backend.fail(claimed.id, claimed.fence, err, retry_delay=5, now=T + 1) is (
        JobState.SCHEDULED
    )
    # A claim that finds nothing to take in this queue still promotes the due job to queued.
    assert await backend.claim("w", ["elsewhere"], 1, 30, now=T + 10) == []
    record = await backend.get_job(claimed.id)
    assert record is not None and record.state is JobState.QUEUED
    again = await backend.fail(claimed.id, claimed.fence, err, retry_delay=5, now=T + 11)
    assert again is JobState.SCHEDULED


async def test_a_repeated_release_answers_true_until_the_job_is_claimed_again(
    backend: Backend,
) -> None:
    claimed = await _claimed(backend, max_attempts=3)
    assert await backend.release(claimed.id, claimed.fence, now=T + 1)
    before = await backend.get_job(claimed.id)
    assert await backend.release(claimed.id, claimed.fence, now=T + 2)
    after = await backend.get_job(claimed.id)
    assert before is not None and after is not None
    assert normalized(after, keep_fence=True) == normalized(before, keep_fence=True)
    assert after.attempts == 0  # the hand-back was applied once
    [again] = await backend.claim("w2", ["default"], 1, 30, now=T + 3)
    assert not await backend.release(claimed.id, claimed.fence, now=T + 4)
    assert await backend.complete(again.id, again.fence, None, now=T + 5)
    assert not await backend.complete(claimed.id, claimed.fence, None, now=T + 6)


async def test_a_completion_is_not_repeated_by_a_failure_or_a_hand_back(backend: Backend) -> None:
    claimed = await _claimed(backend)
    assert await backend.complete(claimed.id, claimed.fence, None, now=T + 1)
    assert await backend.fail(claimed.id, claimed.fence, error(), retry_delay=None, now=T + 2) is (
        None
    )
    assert not await backend.release(claimed.id, claimed.fence, now=T + 2)
