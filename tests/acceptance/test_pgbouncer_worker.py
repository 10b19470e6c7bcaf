"""Real worker processes behind a real PgBouncer in transaction pooling mode.

Two ``conveyor worker`` processes reach PostgreSQL only through a private PgBouncer
(``pool_mode = transaction``, Debian's package) while the test enqueues and reads directly.
One worker polls (no ``listen_url``: it must say so when it starts), the other listens on a
direct connection (``listen_url``). Every job runs exactly once and completes, a worker killed
with ``kill -9`` has its jobs recovered through the pooler, and both exit cleanly on SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from collections.abc import Iterator

import pytest

from conveyor.domain.states import JobState
from tests.support.servers import PgBouncer

from .conftest import POSTGRES_URL, MakeStore, wait_until

pytestmark = pytest.mark.acceptance

JOBS = 200


@pytest.fixture(scope="module")
def bouncer() -> Iterator[PgBouncer]:
    try:
        server = PgBouncer(5432).start()
    except FileNotFoundError as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.stop()


async def test_workers_behind_pgbouncer_run_every_job_once(
    make_store: MakeStore, bouncer: PgBouncer
) -> None:
    store = await make_store("postgres", lease=2.0, heartbeat=0.5, max_stalls=3)
    direct_options = dict(store.options)
    store.url = bouncer.url("test")  # the workers' URL; the test's own app stays direct
    polling = store.start_worker(concurrency=8, log_level="info")
    store.options = {**direct_options, "listen_url": POSTGRES_URL}
    listening = store.start_worker(concurrency=8, log_level="info")
    store.options = direct_options

    work, sync_work = store.app.tasks["work"], store.app.tasks["sync_work"]
    specs = [(sync_work if i % 4 == 0 else work).call(5) for i in range(JOBS)]
    ids = {h.id for h in await store.app.enqueue_many(specs)}

    async def completed() -> bool:
        return await store.count(JobState.COMPLETED) == JOBS

    await wait_until(completed, 120, interval=0.2, message=f"{JOBS} jobs through PgBouncer")
    per_job = Counter(e["job"] for e in store.ledger.starts())
    assert set(per_job) == ids and set(per_job.values()) == {1}, per_job.most_common(3)
    by_pid = Counter(e["pid"] for e in store.ledger.starts())
    assert set(by_pid) <= {polling.pid, listening.pid}

    # Each worker saw the pooler: at start-up (two connections, one server session) or, when
    # a busy pool hid it then, at the first lost prepared statement.
    for proc in (polling, listening):
        log = proc.log()
        assert (
            "behind a transaction pooler (detected" in log
            or "serves this URL although the start-up check did not see it" in log
        ), log[-3000:]

    # A worker killed mid-job: its jobs come back through the pooler and run on the other.
    sleepers = [h.id for h in await store.app.enqueue_many(
        [store.app.tasks["sleeper"].call(1.0) for _ in range(4)]
    )]  # fmt: skip

    def held_by_polling() -> bool:
        return sum(1 for e in store.ledger.starts() if e["job"] in sleepers) >= 1

    await wait_until(held_by_polling, 60, message="a sleeper to start")
    victim = polling if any(
        e["pid"] == polling.pid for e in store.ledger.starts() if e["job"] in sleepers
    ) else listening
    survivor = listening if victim is polling else polling
    os.kill(victim.pid, signal.SIGKILL)

    async def sleepers_done() -> bool:
        records = await store.records(sleepers)
        return all(r.state is JobState.COMPLETED for r in records.values())

    await wait_until(sleepers_done, 90, interval=0.2, message="the killed worker's jobs")
    records = await store.records(sleepers)
    assert {r.result and json.loads(r.result) for r in records.values()} == {"slept"}

    survivor.signal(signal.SIGTERM)
    assert await survivor.wait_exit(30) == 0
    store.check_logs_clean(survivor)
