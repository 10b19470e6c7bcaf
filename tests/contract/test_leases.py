"""Heartbeats, recovery of expired leases (stalls, poison messages) and release."""

from __future__ import annotations

import asyncio
import time

import pytest

from conveyor.backends import Backend
from conveyor.domain.job import ClaimedJob, JobFilter, LeaseStatus, RecoveredJob
from conveyor.domain.states import JobState

from ._support import T, approx_t, error, job


async def _claim_one(
    backend: Backend, worker: str = "w", lease: float = 10, **fields: object
) -> ClaimedJob:
    new = job(**fields)  # type: ignore[arg-type]
    await backend.enqueue([new], now=T)
    [claimed] = await backend.claim(worker, [new.queue], 1, lease, now=T)
    assert claimed.id == new.id
    return claimed


# -- heartbeat ---------------------------------------------------------------------------------


async def test_heartbeat_extends_held_leases(backend: Backend) -> None:
    a = await _claim_one(backend)
    b = await _claim_one(backend)
    statuses = await backend.heartbeat("w", [(b.id, b.fence), (a.id, a.fence)], 25, now=T + 8)
    assert statuses == [LeaseStatus(b.id, True, False), LeaseStatus(a.id, True, False)]
    for claimed in (a, b):
        record = await backend.get_job(claimed.id)
        assert record is not None
        assert record.lease_until == approx_t(T + 33)
        assert record.lease_owner == "w" and record.state is JobState.RUNNING
        assert record.attempts == 1 and record.fence == claimed.fence


async def test_heartbeat_with_no_leases(backend: Backend) -> None:
    assert await backend.heartbeat("w", [], 30, now=T) == []


async def test_heartbeat_keeps_the_job_from_being_recovered(backend: Backend) -> None:
    claimed = await _claim_one(backend, lease=10)
    await backend.heartbeat("w", [(claimed.id, claimed.fence)], 10, now=T + 9)
    assert await backend.recover_expired(3, now=T + 15) == []
    recovered = await backend.recover_expired(3, now=T + 19.5)
    assert [r.id for r in recovered] == [claimed.id]


async def test_heartbeat_reports_a_cancellation_request(backend: Backend) -> None:
    asked = await _claim_one(backend)
    left = await _claim_one(backend)
    assert await backend.cancel(asked.id, "user asked", now=T + 1) == "requested"
    statuses = await backend.heartbeat(
        "w", [(asked.id, asked.fence), (left.id, left.fence)], 10, now=T + 2
    )
    assert statuses == [LeaseStatus(asked.id, True, True), LeaseStatus(left.id, True, False)]
    record = await backend.get_job(asked.id)
    assert record is not None
    assert record.state is JobState.RUNNING
    assert record.cancel_requested and record.cancel_reason == "user asked"
    assert record.lease_until == approx_t(T + 12)


# -- recover_expired ---------------------------------------------------------------------------


async def test_recover_requeues_an_expired_lease_keeping_its_place(backend: Backend) -> None:
    stalled = await _claim_one(backend, lease=10, max_attempts=3)
    newer = job()
    await backend.enqueue([newer], now=T + 1)
    assert await backend.recover_expired(3, now=T + 10) == []  # lease_until == now: still held
    recovered = await backend.recover_expired(3, now=T + 10.5)
    assert recovered == [
        RecoveredJob(stalled.id, stalled.task, stalled.queue, JobState.QUEUED, 1, 1)
    ]
    record = await backend.get_job(stalled.id)
    assert record is not None
    assert record.state is JobState.QUEUED
    assert record.stalls == 1
    assert record.attempts == 1  # the stalled run counts
    assert record.run_at == approx_t(T)
    assert record.started_at == approx_t(T)  # when the stalled run started
    assert record.lease_owner is None and record.lease_until is None
    assert record.finished_at is None and record.error is None
    [again, _] = await backend.claim("w2", ["default"], 2, 10, now=T + 11)
    assert again.id == stalled.id
    assert again.attempt == 2 and again.stalls == 1


async def test_recover_leaves_live_leases_and_other_states_alone(backend: Backend) -> None:
    live = await _claim_one(backend, lease=100)
    waiting = job()
    await backend.enqueue([waiting], now=T)
    assert await backend.recover_expired(0, now=T + 50) == []
    record = await backend.get_job(live.id)
    assert record is not None and record.state is JobState.RUNNING and record.stalls == 0


async def test_stalling_past_the_limit_is_a_poison_message(backend: Backend) -> None:
    first = await _claim_one(backend, lease=10, max_attempts=10)
    [r1] = await backend.recover_expired(1, now=T + 11)
    assert (r1.state, r1.stalls, r1.attempt) == (JobState.QUEUED, 1, 1)
    [second] = await backend.claim("w", ["default"], 1, 10, now=T + 12)
    assert second.fence > first.fence
    [r2] = await backend.recover_expired(1, now=T + 23)
    assert r2 == RecoveredJob(first.id, first.task, first.queue, JobState.FAILED, 2, 2)
    record = await backend.get_job(first.id)
    assert record is not None
    assert record.state is JobState.FAILED
    assert record.error is not None and record.error.code == "poison_message"
    assert record.error.attempt == 2 and record.error.at == approx_t(T + 23)
    assert record.errors == (record.error,)
    assert record.finished_at == approx_t(T + 23)
    assert record.stalls == 2 and record.attempts == 2
    assert record.lease_owner is None and record.lease_until is None


async def test_zero_stalls_allowed_poisons_at_once(backend: Backend) -> None:
    claimed = await _claim_one(backend, lease=10)
    [recovered] = await backend.recover_expired(0, now=T + 11)
    assert recovered.id == claimed.id
    assert recovered.state is JobState.FAILED and recovered.stalls == 1


async def test_recovering_a_job_with_a_cancel_request_cancels_it(backend: Backend) -> None:
    claimed = await _claim_one(backend, lease=10, max_attempts=3)
    await backend.cancel(claimed.id, "operator said so", now=T + 1)
    [recovered] = await backend.recover_expired(3, now=T + 11)
    assert recovered == RecoveredJob(
        claimed.id, claimed.task, claimed.queue, JobState.CANCELLED, 1, 1
    )
    record = await backend.get_job(claimed.id)
    assert record is not None
    assert record.state is JobState.CANCELLED
    assert record.error is not None and record.error.code == "cancelled"
    assert record.error.message == "operator said so"
    assert record.finished_at == approx_t(T + 11)
    assert record.lease_owner is None and record.lease_until is None


async def test_recover_honours_its_limit(backend: Backend) -> None:
    for _ in range(3):
        await _claim_one(backend, lease=10)
    first = await backend.recover_expired(3, now=T + 11, limit=2)
    assert len(first) == 2
    second = await backend.recover_expired(3, now=T + 11, limit=2)
    assert len(second) == 1
    assert {r.id for r in first}.isdisjoint({r.id for r in second})
    assert await backend.recover_expired(3, now=T + 11) == []
    queued = await backend.list_jobs(JobFilter(states=(JobState.QUEUED,)))
    assert len(queued) == 3


async def test_recover_with_store_clock(backend: Backend) -> None:
    new = job()
    await backend.enqueue([new])
    [claimed] = await backend.claim("w", ["default"], 1, 0.05)
    recovered: list[RecoveredJob] = []
    deadline = time.monotonic() + 5
    while not recovered and time.monotonic() < deadline:
        await asyncio.sleep(0.02)  # the poll interval; the deadline bounds the wait
        recovered = await backend.recover_expired(3)
    assert [r.id for r in recovered] == [claimed.id]


# -- release -----------------------------------------------------------------------------------


async def test_release_hands_the_job_back_uncounted(backend: Backend) -> None:
    older = await _claim_one(backend, max_attempts=2)
    newer = job()
    await backend.enqueue([newer], now=T + 1)
    assert await backend.release(older.id, older.fence, now=T + 5)
    record = await backend.get_job(older.id)
    assert record is not None
    assert record.state is JobState.QUEUED
    assert record.attempts == 0
    assert record.run_at == approx_t(T)
    assert record.lease_owner is None and record.lease_until is None
    assert record.stalls == 0 and record.error is None and record.finished_at is None
    # It keeps its place ahead of the newer job and its next run is attempt 1 again.
    [again] = await backend.claim("w", ["default"], 1, 10, now=T + 6)
    assert again.id == older.id and again.attempt == 1
    assert not await backend.release(older.id, older.fence, now=T + 7)


async def test_release_after_a_retry_counts_only_the_failed_run(backend: Backend) -> None:
    first = await _claim_one(backend, max_attempts=3)
    await backend.fail(first.id, first.fence, error(), retry_delay=0, now=T + 1)
    [second] = await backend.claim("w", ["default"], 1, 10, now=T + 2)
    assert second.attempt == 2
    assert await backend.release(second.id, second.fence, now=T + 3)
    record = await backend.get_job(first.id)
    assert record is not None and record.attempts == 1
    assert record.run_at == approx_t(T + 1)
    assert len(record.errors) == 1


@pytest.mark.parametrize("lease", [10.0, 0.5])
async def test_claim_sets_lease_relative_to_now(backend: Backend, lease: float) -> None:
    claimed = await _claim_one(backend, lease=lease)
    assert claimed.lease_until == approx_t(T + lease)


async def test_an_expired_lease_still_holds_until_it_is_recovered(backend: Backend) -> None:
    late = await _claim_one(backend, lease=10)
    done = await _claim_one(backend, lease=10)
    # Past lease_until, but nobody recovered the jobs: the leases still hold.
    [status] = await backend.heartbeat("w", [(late.id, late.fence)], 10, now=T + 15)
    assert status.held
    record = await backend.get_job(late.id)
    assert record is not None and record.lease_until == approx_t(T + 25)
    assert await backend.complete(done.id, done.fence, b"late but fine", now=T + 16)
    assert await backend.recover_expired(3, now=T + 20) == []


async def test_recover_with_a_limit_of_zero_recovers_nothing(backend: Backend) -> None:
    claimed = await _claim_one(backend, lease=10)
    assert await backend.recover_expired(3, now=T + 11, limit=0) == []
    record = await backend.get_job(claimed.id)
    assert record is not None and record.state is JobState.RUNNING


@pytest.mark.parametrize("how", ["release", "retry"])
async def test_a_cancel_request_survives_a_hand_back(backend: Backend, how: str) -> None:
    first = await _claim_one(backend, max_attempts=3)
    assert await backend.cancel(first.id, "stop it", now=T + 1) == "requested"
    if how == "release":
        assert await backend.release(first.id, first.fence, now=T + 2)
    else:
        await backend.fail(first.id, first.fence, error(), retry_delay=0, now=T + 2)
    record = await backend.get_job(first.id)
    assert record is not None and record.state is JobState.QUEUED
    assert record.cancel_requested and record.cancel_reason == "stop it"
    # The next worker learns of it at once.
    [second] = await backend.claim("w2", ["default"], 1, 10, now=T + 3)
    [status] = await backend.heartbeat("w2", [(second.id, second.fence)], 10, now=T + 4)
    assert status.held and status.cancel_requested
