"""Cancelling a job that runs in another process.

The test process calls ``handle.cancel()``; the worker learns it at once where the backend
pushes cancellations (Redis pub/sub), otherwise with its next heartbeat (the fallback
everywhere), interrupts the async handler (or sets the flag a sync handler polls) and stores
``cancelled``.
"""

from __future__ import annotations

import signal
import time

import pytest

from conveyor import CancelOutcome, JobCancelledError
from conveyor.domain.states import JobState

from .conftest import MakeStore, wait_until, write_result

pytestmark = pytest.mark.acceptance


async def test_cancel_a_running_job_in_another_process(make_store: MakeStore, kind: str) -> None:
    store = await make_store(kind, lease=2.0, heartbeat=0.5)
    async_job = await store.app.tasks["sleeper"].enqueue(30.0)
    thread_job = await store.app.tasks["sync_sleeper"].enqueue(30.0)
    later = await store.app.tasks["work"].options(delay="60s").enqueue(1)
    worker = store.start_worker(concurrency=4)
    await wait_until(lambda: len(store.ledger.starts()) == 2, 30, message="both jobs to start")

    # A waiting job is cancelled at once and never runs.
    assert await later.cancel("not needed") is CancelOutcome.CANCELLED
    assert (await store.record(later.id)).state is JobState.CANCELLED

    asked = time.monotonic()
    assert await async_job.cancel("user pressed stop") is CancelOutcome.REQUESTED
    assert await thread_job.cancel("user pressed stop") is CancelOutcome.REQUESTED

    async def both_cancelled() -> bool:
        states = {(await store.record(h.id)).state for h in (async_job, thread_job)}
        return states == {JobState.CANCELLED}

    await wait_until(both_cancelled, 5, message="both running jobs to end cancelled")
    latency = time.monotonic() - asked
    assert latency < 3.0, latency

    # A thread cannot be interrupted: the job is stored cancelled at once and the handler
    # notices its flag at its next check (every 20 ms here).
    def noticed() -> dict[str, dict[str, object]] | None:
        seen = {e["job"]: e for e in store.ledger.events("interrupted")}
        return seen if set(seen) == {async_job.id, thread_job.id} else None

    seen = await wait_until(noticed, 5, message="both handlers to notice the cancellation")
    for entry in seen.values():
        assert entry["cancelled"] is True and entry["reason"] == "user pressed stop", entry
    assert not store.ledger.events("end")
    for handle in (async_job, thread_job):
        rec = await store.record(handle.id)
        assert rec.attempts == 1 and rec.lease_owner is None, rec
        assert rec.error is not None and rec.error.code == "cancelled", rec
        with pytest.raises(JobCancelledError):
            await handle.result(timeout=1)
    assert store.ledger.starts(later.id) == []

    # The worker carries on with other work.
    assert worker.alive
    after = await store.app.tasks["work"].enqueue(5)
    assert await after.result(timeout=15) == 5
    worker.signal(signal.SIGTERM)
    assert await worker.wait_exit(10) == 0, worker.log()
    write_result(f"cancel_running-{kind}", {"backend": kind, "cancel_latency_s": round(latency, 3)})


async def test_a_pushed_cancellation_beats_the_next_heartbeat(make_store: MakeStore) -> None:
    """On Redis the cancel is pushed to the worker: with a 10 s heartbeat, the running jobs are
    cancelled in well under the time before the worker's first heartbeat could tell it."""
    store = await make_store("redis", lease=30.0, heartbeat=10.0)
    worker = store.start_worker(concurrency=2)
    async_job = await store.app.tasks["sleeper"].enqueue(60.0)
    thread_job = await store.app.tasks["sync_sleeper"].enqueue(60.0)
    await wait_until(lambda: len(store.ledger.starts()) == 2, 9, message="both jobs to start")

    asked = time.monotonic()
    assert await async_job.cancel("pushed") is CancelOutcome.REQUESTED
    assert await thread_job.cancel("pushed") is CancelOutcome.REQUESTED

    async def both_cancelled() -> bool:
        states = {(await store.record(h.id)).state for h in (async_job, thread_job)}
        return states == {JobState.CANCELLED}

    await wait_until(both_cancelled, 3, message="both running jobs to end cancelled")
    latency = time.monotonic() - asked
    seen = await wait_until(
        lambda: len(store.ledger.events("interrupted")) == 2 and store.ledger.events("interrupted"),
        3,
        message="both handlers to notice the cancellation",
    )
    assert all(e["cancelled"] is True and e["reason"] == "pushed" for e in seen), seen
    worker.signal(signal.SIGTERM)
    assert await worker.wait_exit(10) == 0, worker.log()
    write_result("cancel_pushed-redis", {"backend": "redis", "cancel_latency_s": round(latency, 3)})
