"""Transactional completion on SQLite: a handler's writes to its own tables in the queue's
file commit with the job's completion (``current_job().transaction()``), so they happen
exactly once across crashes, failures, lost leases and retries."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conveyor import Conveyor, JobState, RetryPolicy, current_job
from conveyor.testing import run_until_idle
from tests.support import wait_until

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/jobs.db"
    Conveyor(url).migrate_sync()
    with sqlite3.connect(tmp_path / "jobs.db") as conn:
        conn.execute("CREATE TABLE ledger (order_id INTEGER, attempt INTEGER)")
    return url


def ledger(url: str) -> list[tuple[int, int]]:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        rows = conn.execute("SELECT order_id, attempt FROM ledger ORDER BY 1, 2").fetchall()
    return [(int(a), int(b)) for a, b in rows]


async def test_the_handlers_writes_and_logs_commit_with_the_completion(url: str) -> None:
    app = Conveyor(url, lease="2s", heartbeat_interval="0.5s")

    @app.task(retry=RetryPolicy.build(3, delay=0))
    async def pay(order: int) -> str:
        job = current_job()
        conn = await job.transaction()
        assert await job.transaction() is conn  # the same connection again
        conn.execute("INSERT INTO ledger VALUES (?, ?)", (order, job.attempt))
        job.log.info("written", order=order)
        if order < 0 and job.attempt == 1:
            raise RuntimeError("after the write: it must roll back")
        return "paid"

    good, bad = await pay.enqueue(7), await pay.enqueue(-1)
    await run_until_idle(app)
    assert await good.result(5) == "paid" and await bad.result(5) == "paid"
    assert ledger(url) == [(-1, 2), (7, 1)]  # the failed attempt's write rolled back
    info = await good.info()
    assert [e.message for e in info.logs] == ["written"]  # committed with the completion
    await app.close()


async def test_a_lost_lease_rolls_the_writes_back(url: str) -> None:
    app = Conveyor(url, lease="2s", heartbeat_interval="0.5s")

    @app.task(retry=RetryPolicy.build(2, delay=0))
    async def slow_write() -> None:
        job = current_job()
        conn = await job.transaction()
        conn.execute("INSERT INTO ledger VALUES (1, ?)", (job.attempt,))
        if job.attempt == 1:
            # As if the lease had expired and the job been claimed again meanwhile: its fence
            # moves on (written in this transaction: SQLite lets no other writer in now).
            conn.execute("UPDATE conveyor_jobs SET fence = fence + 100 WHERE id = ?", (job.job_id,))

    handle = await slow_write.enqueue()
    await run_until_idle(app)
    # The completion found the fence moved (the lease lost): the transaction rolled back, the
    # write and the fence change with it. The job waits for its lease to expire, then reruns.
    assert await handle.state() is JobState.RUNNING
    assert ledger(url) == []
    backend = await app.backend()
    await backend.recover_expired(app.max_stalls, now=time.time() + 3600)
    await run_until_idle(app)
    assert await handle.state() is JobState.COMPLETED
    assert ledger(url) == [(1, 2)]
    await app.close()


async def test_kill_9_between_the_handlers_writes_and_completion(url: str) -> None:
    from tests.integration import sqlite_tx_apps

    env = {**os.environ, "CONVEYOR_SQLITE_TX_URL": url}
    app = Conveyor(url)
    handle = app.enqueue_many_sync([sqlite_tx_apps.pay.call(7)])[0]
    app.close_sync()

    def worker(kill_first: bool) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "conveyor", "worker", "tests.integration.sqlite_tx_apps:app",
             "--poll-interval", "0.2", "--log-level", "warning", "--no-scheduler"],
            cwd=ROOT,
            env={**env, "CONVEYOR_SQLITE_TX_KILL_FIRST": "1" if kill_first else "0"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    dying = worker(kill_first=True)
    try:
        assert dying.wait(timeout=30) == -9  # it killed itself after writing, before completing
    finally:
        if dying.poll() is None:
            dying.kill()
    assert ledger(url) == []  # the write died with its connection
    survivor = worker(kill_first=False)
    try:
        reader = Conveyor(url)

        async def done() -> bool:
            info = await reader.inspect.job(handle.id)
            return info is not None and info.state is JobState.COMPLETED

        await wait_until(done, 30, message="the job to complete on the second worker")
        await reader.close()
    finally:
        survivor.terminate()
        survivor.wait(timeout=30)
    assert ledger(url) == [(7, 2)]  # exactly one effect, from the second attempt
