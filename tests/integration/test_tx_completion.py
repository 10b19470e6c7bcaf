"""Transactional completion on PostgreSQL: a handler's writes commit with its completion, so
they happen exactly once across crashes, failures and retries."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg")

from conveyor import Conveyor, JobState  # noqa: E402
from conveyor.testing import memory_app, run_until_idle  # noqa: E402
from tests.support import POSTGRES_URL, require_server  # noqa: E402

URL = POSTGRES_URL
ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("_postgres")


@pytest.fixture
def _postgres() -> None:
    require_server(URL)  # skipped only when unreachable (failed under CI)


@pytest.fixture
async def pg_app() -> Any:
    schema = f"tx_{uuid.uuid4().hex[:10]}"
    app = Conveyor(URL, backend_options={"schema": schema, "auto_migrate": True},
                   lease="2s", heartbeat_interval="0.5s")
    await app.migrate()
    async with await psycopg.AsyncConnection.connect(URL, autocommit=True) as conn:
        await conn.execute(
            f'CREATE TABLE "{schema}".ledger (order_id int, attempt int, '
            "at timestamptz DEFAULT clock_timestamp())"
        )
    yield app, schema
    await app.close()
    await app.factory.destroy()


async def ledger(schema: str) -> list[tuple[int, int]]:
    async with await psycopg.AsyncConnection.connect(URL, autocommit=True) as conn:
        cur = await conn.execute(f'SELECT order_id, attempt FROM "{schema}".ledger ORDER BY 1, 2')
        return [(int(a), int(b)) for a, b in await cur.fetchall()]


def start_worker(schema: str, *, kill_first: bool) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CONVEYOR_TX_SCHEMA": schema, "CONVEYOR_TX_URL": URL,
           "CONVEYOR_TX_KILL_FIRST": "1" if kill_first else "0"}
    return subprocess.Popen(
        [sys.executable, "-m", "conveyor", "worker", "tests.integration.tx_apps:app",
         "--poll-interval", "0.2", "--log-level", "warning", "--no-scheduler"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


async def wait_state(app: Conveyor, job_id: str, state: JobState, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        info = await app.inspect.job(job_id)
        if info is not None and info.state is state:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} is {info and info.state}, expected {state}")
        await asyncio.sleep(0.05)


async def test_kill_9_between_the_handlers_writes_and_completion(pg_app: Any) -> None:
    app, schema = pg_app
    from tests.integration import tx_apps

    handle = await app.enqueue_many([tx_apps.pay.call(7)])
    job_id = handle[0].id
    dying = start_worker(schema, kill_first=True)
    try:
        dying.wait(timeout=30)
        assert dying.returncode == -9  # it killed itself after writing, before completing
        assert await ledger(schema) == []  # the write rolled back with the connection
        survivor = start_worker(schema, kill_first=False)
        try:
            await wait_state(app, job_id, JobState.COMPLETED)
        finally:
            survivor.terminate()
            survivor.wait(timeout=30)
    finally:
        if dying.poll() is None:
            dying.kill()
    assert await ledger(schema) == [(7, 2)]  # exactly one effect, from the second attempt
    info = await app.inspect.job(job_id)
    assert info is not None and info.record.attempts == 2 and info.record.stalls == 1


async def test_a_failing_handler_rolls_its_writes_back(pg_app: Any) -> None:
    app, schema = pg_app
    from tests.integration import tx_apps

    (handle,) = await app.enqueue_many([tx_apps.pay.call(-1)])
    worker = start_worker(schema, kill_first=False)
    try:
        await wait_state(app, handle.id, JobState.COMPLETED)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    assert await ledger(schema) == [(-1, 2)]


async def test_a_lost_lease_rolls_the_writes_back(pg_app: Any) -> None:
    app, schema = pg_app
    from conveyor import current_job

    @app.task(name="slow_write")
    async def slow_write() -> None:
        job = current_job()
        conn = await job.transaction()
        await conn.execute(f'INSERT INTO "{schema}".ledger VALUES (1, %s)', (job.attempt,))
        if job.attempt == 1:
            # Another worker's recovery takes the job away (as if its lease had expired).
            backend = await app.backend()
            await backend.recover_expired(app.max_stalls, now=time.time() + 3600)

    handle = await slow_write.enqueue()
    await run_until_idle(app)
    assert await handle.state() is JobState.COMPLETED
    assert await ledger(schema) == [(1, 2)]  # the zombie attempt's write rolled back


async def test_transaction_needs_a_transactional_backend() -> None:
    app = memory_app()
    seen: list[str] = []
    from conveyor import ConfigurationError, current_job

    @app.task
    async def wants_tx() -> None:
        try:
            await current_job().transaction()
        except ConfigurationError as exc:
            seen.append(str(exc))
            raise

    await wants_tx.enqueue()
    await run_until_idle(app)
    assert seen and "PostgreSQL" in seen[0]
