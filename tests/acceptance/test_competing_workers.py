"""Several healthy workers on one store never run a job twice.

Three worker processes compete for 1,200 short jobs (async ones on the event loop and sync ones
in threads). The ledger, written by the handlers themselves, must show every job started
exactly once, at attempt 1, and the store must show every job completed with no stall.
"""

from __future__ import annotations

import signal
import time
from collections import Counter

import pytest

from conveyor.domain.states import JobState

from .conftest import MakeStore, wait_until, write_result

pytestmark = pytest.mark.acceptance

JOBS = 1200
WORKERS = 3


async def test_competing_workers_run_each_job_exactly_once(
    make_store: MakeStore, kind: str
) -> None:
    store = await make_store(kind, lease=2.0, heartbeat=0.5)
    work, sync_work = store.app.tasks["work"], store.app.tasks["sync_work"]
    specs = [(sync_work if i % 4 == 0 else work).call(i % 3) for i in range(JOBS)]
    handles = await store.app.enqueue_many(specs)
    ids = {h.id for h in handles}
    assert len(ids) == JOBS
    began = time.monotonic()
    workers = [store.start_worker(concurrency=8) for _ in range(WORKERS)]

    async def all_completed() -> bool:
        return await store.count(JobState.COMPLETED) == JOBS

    await wait_until(all_completed, 120, interval=0.2, message=f"all {JOBS} jobs to complete")
    elapsed = time.monotonic() - began
    for proc in workers:
        assert proc.alive, proc.log()

    starts = store.ledger.starts()
    per_job = Counter(e["job"] for e in starts)
    twice = {job: n for job, n in per_job.items() if n > 1}
    assert not twice, f"{len(twice)} job(s) ran more than once: {list(twice.items())[:5]}"
    assert set(per_job) == ids
    assert {e["attempt"] for e in starts} == {1}
    records = await store.records(ids)
    assert all(r.state is JobState.COMPLETED for r in records.values())
    assert all(r.attempts == 1 and r.stalls == 0 for r in records.values())
    share = Counter(e["pid"] for e in starts)
    assert set(share) <= {p.pid for p in workers}
    assert len(share) >= 2, f"only one worker got jobs: {share}"

    for proc in workers:
        proc.signal(signal.SIGTERM)
    for proc in workers:
        assert await proc.wait_exit(15) == 0, proc.log()
    write_result(
        f"competing_workers-{kind}",
        {
            "backend": kind,
            "jobs": JOBS,
            "workers": WORKERS,
            "concurrency_each": 8,
            "seconds_incl_startup": round(elapsed, 3),
            "jobs_per_s_incl_startup": round(JOBS / elapsed, 1),
            "jobs_per_worker": sorted(share.values()),
        },
    )
