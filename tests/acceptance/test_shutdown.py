"""SIGTERM drains and hands back: a stopping worker never leaves jobs waiting for a lease.

The first SIGTERM stops claiming and gives running jobs ``--grace`` seconds; what is still
running then goes straight back to ``queued`` (the attempt not counted, no lease owner), so
another worker starts it at once, long before the lease (30 s here) could have expired. A
second SIGTERM skips the rest of the grace period.
"""

from __future__ import annotations

import signal
import time

import pytest

from conveyor.domain.job import JobRecord
from conveyor.domain.states import JobState

from .conftest import MakeStore, wait_until, write_result

pytestmark = pytest.mark.acceptance

LONG_LEASE = 30.0


def assert_handed_back(records: dict[str, JobRecord]) -> None:
    for rec in records.values():
        assert rec.state is JobState.QUEUED, rec
        assert rec.attempts == 0, rec
        assert rec.lease_owner is None, rec
        assert rec.stalls == 0, rec


async def test_sigterm_hands_unfinished_jobs_back_at_once(make_store: MakeStore, kind: str) -> None:
    store = await make_store(kind, lease=LONG_LEASE, heartbeat=1.0)
    sleeper, sync_sleeper = store.app.tasks["sleeper"], store.app.tasks["sync_sleeper"]
    handles = await store.app.enqueue_many(
        [sleeper.call(30.0), sleeper.call(30.0), sync_sleeper.call(30.0)]
    )
    ids = {h.id for h in handles}
    first = store.start_worker(concurrency=3, grace=0.5)
    await wait_until(lambda: len(store.ledger.starts()) == 3, 30, message="3 jobs to start")

    signalled = time.monotonic()
    first.signal(signal.SIGTERM)
    assert await first.wait_exit(10) == 0, first.log()
    exit_after = time.monotonic() - signalled
    assert exit_after < 5.0, exit_after  # grace 0.5 s, far below the 30 s lease

    assert_handed_back(await store.records(ids))
    interrupted = store.ledger.events("interrupted")
    # The async handlers were interrupted while the worker was shutting down. (The thread one
    # cannot be interrupted; it may or may not have noticed its flag before the process ended.)
    assert {h.id for h in handles[:2]} <= {e["job"] for e in interrupted}
    assert all(e.get("shutting_down", True) for e in interrupted), interrupted

    second_started = time.monotonic()
    second = store.start_worker(concurrency=3, grace=0.5)
    await wait_until(
        lambda: len([e for e in store.ledger.starts() if e["pid"] == second.pid]) == 3,
        10,
        message="a new worker to pick the handed-back jobs up",
    )
    pickup = time.monotonic() - second_started
    assert pickup < LONG_LEASE / 3, pickup  # includes the new process's start-up
    reruns = [e for e in store.ledger.starts() if e["pid"] == second.pid]
    assert {e["job"] for e in reruns} == ids
    assert [e["attempt"] for e in reruns] == [1, 1, 1]  # the handed-back run did not count

    second.signal(signal.SIGTERM)
    assert await second.wait_exit(10) == 0, second.log()
    assert_handed_back(await store.records(ids))
    write_result(
        f"sigterm_handback-{kind}",
        {
            "backend": kind,
            "lease_s": LONG_LEASE,
            "grace_s": 0.5,
            "exit_after_sigterm_s": round(exit_after, 3),
            "new_worker_pickup_s_incl_startup": round(pickup, 3),
        },
    )


async def test_jobs_shorter_than_the_grace_period_finish_on_ctrl_c(
    make_store: MakeStore, kind: str
) -> None:
    store = await make_store(kind, lease=LONG_LEASE, heartbeat=1.0)
    work = store.app.tasks["work"]
    handles = await store.app.enqueue_many([work.call(1500) for _ in range(5)])
    ids = [h.id for h in handles]
    worker = store.start_worker(concurrency=2, grace=10)
    await wait_until(lambda: len(store.ledger.starts()) == 2, 30, message="2 jobs to start")
    worker.signal(signal.SIGINT)  # Ctrl-C drains the same way as SIGTERM
    assert await worker.wait_exit(15) == 0, worker.log()

    started = {e["job"] for e in store.ledger.starts()}
    assert len(started) == 2, "the stopping worker claimed more jobs"
    assert {e["job"] for e in store.ledger.events("end")} == started
    records = await store.records(ids)
    for job_id, rec in records.items():
        if job_id in started:
            assert rec.state is JobState.COMPLETED and rec.attempts == 1, rec
        else:
            assert rec.state is JobState.QUEUED and rec.attempts == 0, rec
            assert rec.lease_owner is None, rec
    assert not store.ledger.events("interrupted")


async def test_second_sigterm_forces_the_hand_back(make_store: MakeStore, kind: str) -> None:
    store = await make_store(kind, lease=LONG_LEASE, heartbeat=1.0)
    sleeper = store.app.tasks["sleeper"]
    handles = await store.app.enqueue_many([sleeper.call(30.0) for _ in range(2)])
    ids = {h.id for h in handles}
    worker = store.start_worker(concurrency=2, grace=60, log_level="info")
    await wait_until(lambda: len(store.ledger.starts()) == 2, 30, message="2 jobs to start")

    worker.signal(signal.SIGTERM)
    await wait_until(lambda: "draining 2 running job(s)" in worker.log(), 10, message="draining")
    assert worker.alive
    records = await store.records(ids)
    assert all(r.state is JobState.RUNNING for r in records.values()), records
    assert not store.ledger.events("interrupted")

    forced = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert await worker.wait_exit(10) == 0, worker.log()
    exit_after = time.monotonic() - forced
    assert exit_after < 5.0, exit_after
    assert_handed_back(await store.records(ids))
    assert {e["job"] for e in store.ledger.events("interrupted")} == ids
