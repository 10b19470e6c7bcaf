"""kill -9 a worker with jobs in flight: every job still completes, once per surviving run.

Two real worker processes share a store; one is SIGKILLed while it holds leases. The survivor
recovers the dead worker's jobs when their leases expire and runs them again (attempt 2, one
stall); nothing is lost, and the only jobs that ran twice are the ones the dead worker held.
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from conveyor import CancelOutcome
from conveyor.domain.states import JobState

from .conftest import MakeStore, wait_until, worker_pid, write_result

pytestmark = pytest.mark.acceptance

JOBS = 200


async def test_kill_9_with_jobs_in_flight_loses_nothing(make_store: MakeStore, kind: str) -> None:
    store = await make_store(kind, lease=2.0, heartbeat=0.5)
    rng = random.Random(7)
    work = store.app.tasks["work"]
    handles = await store.app.enqueue_many([work.call(rng.randint(50, 200)) for _ in range(JOBS)])
    ids = {h.id for h in handles}
    victim = store.start_worker(concurrency=4)
    survivor = store.start_worker(concurrency=4)

    # Kill the victim once it has done some work and holds leases right now.
    async def victim_busy() -> bool:
        done_by_victim = [e for e in store.ledger.events("end") if e["pid"] == victim.pid]
        if len(done_by_victim) < 10:
            return False
        running = await store.in_state(JobState.RUNNING)
        return any(worker_pid(r.lease_owner) == victim.pid for r in running)

    await wait_until(victim_busy, 60, message="the victim to hold leases")
    killed_at = time.time()
    os.kill(victim.pid, signal.SIGKILL)
    assert await victim.wait_exit(10) == -signal.SIGKILL

    # What the victim held when it died (frozen now: nobody else owns its leases yet).
    running = await store.in_state(JobState.RUNNING)
    in_flight = {r.id for r in running if worker_pid(r.lease_owner) == victim.pid}
    assert in_flight, "the victim held no lease when it was killed"
    unfinished_by_victim = {e["job"] for e in store.ledger.starts() if e["pid"] == victim.pid} - {
        e["job"] for e in store.ledger.events("end") if e["pid"] == victim.pid
    }
    assert unfinished_by_victim <= in_flight

    async def all_completed() -> bool:
        return await store.count(JobState.COMPLETED) == JOBS

    await wait_until(all_completed, 60, interval=0.1, message=f"all {JOBS} jobs to complete")
    assert survivor.alive

    records = await store.records(ids)
    assert {r.state for r in records.values()} == {JobState.COMPLETED}
    starts = store.ledger.by_job("start")
    ends = store.ledger.by_job("end")
    assert set(starts) == ids, "some job never ran"
    for job_id in ids:
        rec = records[job_id]
        runs = starts[job_id]
        live_runs = [e for e in runs if e["pid"] != victim.pid]
        if job_id in in_flight:
            # Recovered: counted as a second attempt with one stall, run by the survivor.
            assert rec.attempts == 2 and rec.stalls == 1, rec
            assert [e["attempt"] for e in live_runs] == [2], runs
            assert all(e["pid"] == survivor.pid for e in live_runs)
            assert len(runs) - len(live_runs) <= 1, runs
        else:
            assert rec.attempts == 1 and rec.stalls == 0, rec
            assert len(runs) == 1 and runs[0]["attempt"] == 1, runs
            # It finished exactly once, in the process that started it.
            assert [e["pid"] for e in ends[job_id]] == [runs[0]["pid"]]

    # Recovery: from the kill to the last recovered job's completion (as the store saw it).
    recovered_finished = [records[j].finished_at for j in in_flight]
    first_rerun = min(e["t"] for j in in_flight for e in starts[j] if e["pid"] == survivor.pid)
    recovery = max(f for f in recovered_finished if f is not None) - killed_at
    assert recovery < 2.0 + 5.0 + 5.0, recovery  # lease + maintenance tick + slack
    write_result(
        f"kill9_recovery-{kind}",
        {
            "backend": kind,
            "jobs": JOBS,
            "in_flight_at_kill": len(in_flight),
            "started_but_unfinished_by_victim": len(unfinished_by_victim),
            "lease_s": store.lease,
            "first_rerun_after_kill_s": round(first_rerun - killed_at, 3),
            "recovery_s": round(recovery, 3),
            "duplicated_runs": sum(len(v) - 1 for v in starts.values()),
        },
    )


async def test_a_paused_worker_cannot_overwrite_the_newer_attempt(
    make_store: MakeStore, kind: str
) -> None:
    """SIGSTOP a worker mid-job past its lease; another worker recovers and re-runs the job;
    SIGCONT the zombie: its late outcome is fenced off and the newer attempt's result stands."""
    store = await make_store(kind, lease=2.0, heartbeat=0.5)
    handle = await store.app.tasks["whoami"].enqueue(2500)
    zombie = store.start_worker(concurrency=1)
    await wait_until(lambda: store.ledger.starts(handle.id), 30, message="the first run")
    zombie.signal(signal.SIGSTOP)
    rescuer = store.start_worker(concurrency=1)

    def rerun() -> list[dict[str, object]]:
        return [e for e in store.ledger.starts(handle.id) if e["pid"] == rescuer.pid]

    await wait_until(rerun, 30, message="the rescuer to re-run the job")
    zombie.signal(signal.SIGCONT)
    # The zombie wakes while the rescuer holds the lease and finds out it lost its own.
    await wait_until(lambda: "lease" in zombie.log(), 15, message="the zombie to notice")
    assert await handle.result(timeout=30) == {"pid": rescuer.pid, "attempt": 2}
    rec = await store.record(handle.id)
    assert rec.state is JobState.COMPLETED and rec.attempts == 2 and rec.stalls == 1, rec
    assert zombie.alive and rescuer.alive
    for proc in (zombie, rescuer):
        proc.signal(signal.SIGTERM)
    for proc in (zombie, rescuer):
        assert await proc.wait_exit(10) == 0, proc.log()
    assert await handle.result(timeout=1) == {"pid": rescuer.pid, "attempt": 2}


async def test_cancelling_the_job_of_a_dead_worker(make_store: MakeStore, kind: str) -> None:
    """A cancellation requested while the job's worker is dead is honoured at recovery: the job
    ends cancelled and never runs again."""
    store = await make_store(kind, lease=2.0, heartbeat=0.5)
    handle = await store.app.tasks["sleeper"].enqueue(30.0)
    victim = store.start_worker(concurrency=1)
    await wait_until(lambda: store.ledger.starts(handle.id), 30, message="the job to start")
    os.kill(victim.pid, signal.SIGKILL)
    await victim.wait_exit(10)
    assert await handle.cancel("owner died") is CancelOutcome.REQUESTED
    rescuer = store.start_worker(concurrency=1)

    async def cancelled() -> bool:
        return (await store.record(handle.id)).state is JobState.CANCELLED

    await wait_until(cancelled, 30, interval=0.1, message="the job to end cancelled")
    # One more claim cycle passes in the rescuer; the cancelled job is not run again.
    done = await store.app.tasks["work"].enqueue(1)
    assert await done.result(timeout=15) == 1
    assert [e["pid"] for e in store.ledger.starts(handle.id)] == [victim.pid]
    rec = await store.record(handle.id)
    assert rec.lease_owner is None and rec.stalls == 1, rec
    rescuer.signal(signal.SIGTERM)
    assert await rescuer.wait_exit(10) == 0, rescuer.log()


def process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_kill_9_leaves_no_process_mode_child_running(make_store: MakeStore) -> None:
    store = await make_store("sqlite", lease=2.0, heartbeat=0.5)
    await store.app.tasks["long_child_job"].enqueue("orphan?", 60.0)
    worker = store.start_worker(concurrency=1)
    started = await wait_until(
        lambda: store.ledger.events("child_start"), 60, message="the process-mode job to start"
    )
    child = started[0]["pid"]
    assert started[0]["parent"] == worker.pid and child != worker.pid  # a pool child
    os.kill(worker.pid, signal.SIGKILL)
    await worker.wait_exit(10)
    await wait_until(lambda: not process_alive(child), 5, message=f"child {child} to go away")
