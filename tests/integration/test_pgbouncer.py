"""The PostgreSQL backend behind a real PgBouncer in transaction pooling mode.

A private ``pgbouncer`` (Debian's package, installed by ``.ci/ensure-pgbouncer`` when missing)
runs on a free loopback port in front of the shared test server. The client must detect the
pooler when it opens (prepared statements off, no LISTEN through it), find out by itself when a
LISTEN silently does not stick, wake up through ``listen_url`` when one is given, and pass the
whole PostgreSQL contract suite through the pooler.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from conveyor.backends import factory_from_url
from conveyor.backends.postgres import PostgresFactory
from conveyor.backends.postgres.backend import PostgresBackend
from tests.acceptance.conftest import wait_until
from tests.contract._support import POSTGRES_URL, job, require_kind
from tests.support.servers import PgBouncer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bouncer() -> Iterator[PgBouncer]:
    require_kind("postgres")
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


@pytest.fixture
async def pooled_factory(bouncer: PgBouncer) -> AsyncIterator[PostgresFactory]:
    factory = factory_from_url(bouncer.url(), schema=f"t_{uuid4().hex[:12]}")
    assert isinstance(factory, PostgresFactory)
    await factory.migrate()
    try:
        yield factory
    finally:
        await factory.destroy()


def client(factory: PostgresFactory, **options: Any) -> PostgresBackend:
    """A client of ``factory``'s schema with other options."""
    return PostgresBackend(replace(factory.settings, **options))


async def test_a_transaction_pooler_is_detected_at_open(
    pooled_factory: PostgresFactory, caplog: pytest.LogCaptureFixture
) -> None:
    backend = pooled_factory.create()
    with caplog.at_level(logging.INFO, "conveyor.backends.postgres"):
        await backend.open()
    try:
        stats = backend.stats()
        assert stats["pooled"] is True
        assert stats["prepare_threshold"] is None
        assert "behind a transaction pooler (detected" in caplog.text
        assert "poll every" in caplog.text
        # The same statements many times over (psycopg would prepare them after 5): no
        # "prepared statement does not exist" from another server session.
        for _ in range(30):
            jobs = [job() for _ in range(3)]
            await backend.enqueue(jobs)
            claimed = await backend.claim("w:1:x", ["default"], 3, 30.0)
            for c in claimed:
                assert await backend.complete(c.id, c.fence, None)
        # Nothing listens through the pooler: waiters poll.
        await backend.wait_for_jobs(["default"], 0.05)
        assert backend.stats()["listening"] is False
    finally:
        await backend.close()


async def test_a_direct_connection_is_not_taken_for_a_pooler() -> None:
    require_kind("postgres")
    factory = factory_from_url(POSTGRES_URL, schema=f"t_{uuid4().hex[:12]}")
    await factory.migrate()
    backend = factory.create()
    await backend.open()
    try:
        assert isinstance(backend, PostgresBackend)
        assert backend.stats()["pooled"] is False
        assert backend.stats()["prepare_threshold"] == 5
        await backend.wait_for_jobs(["default"], 0.01)
        await wait_until(lambda: backend.stats()["listen_verified"], 30, message="LISTEN check")
    finally:
        await backend.close()
        await factory.destroy()


async def test_a_listen_that_does_not_stick_falls_back_to_polling(
    pooled_factory: PostgresFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Told there is no pooler, the client LISTENs through PgBouncer anyway: the LISTEN lands
    on a server session the pooler hands to others, and its own test notification never
    arrives. It must say so and poll; jobs are still found."""
    backend = client(pooled_factory, pooled=False, listen_probe_timeout=0.5, poll_interval=0.1)
    producer = pooled_factory.create()
    await backend.open()
    await producer.open()
    try:
        with caplog.at_level(logging.WARNING, "conveyor.backends.postgres"):
            await backend.wait_for_jobs(["default"], 0.01)
            await wait_until(
                lambda: backend.stats()["listen_broken"], 30, message="the LISTEN self-check"
            )
        assert "did not receive its own test notification" in caplog.text
        assert backend.stats()["listening"] is False
        [queued] = await producer.enqueue([job()])
        waiter = asyncio.ensure_future(backend.wait_for_jobs(["default"], 3600))
        await asyncio.wait_for(waiter, 60)  # found by polling (every 0.1 s)
        [claimed] = await backend.claim("w:1:x", ["default"], 1, 30.0)
        assert claimed.id == queued.id
    finally:
        await producer.close()
        await backend.close()


async def test_listen_url_wakes_waiters_behind_the_pooler(pooled_factory: PostgresFactory) -> None:
    """Statements through PgBouncer, LISTEN on a direct connection: a waiter that would poll
    only once an hour is woken by the producer's notification."""
    backend = client(pooled_factory, listen_url=POSTGRES_URL, poll_interval=3600.0)
    producer = pooled_factory.create()
    await backend.open()
    await producer.open()
    try:
        assert backend.stats()["pooled"] is True
        await backend.wait_for_jobs(["default"], 0.01)
        await wait_until(
            lambda: backend.stats()["listen_verified"], 30, message="LISTEN on listen_url"
        )
        waiter = asyncio.ensure_future(backend.wait_for_jobs(["default"], 3600))
        await asyncio.sleep(0)  # let it start waiting before the job arrives
        await producer.enqueue([job()])
        await asyncio.wait_for(waiter, 60)
        assert len(await backend.claim("w:1:x", ["default"], 1, 30.0)) == 1
    finally:
        await producer.close()
        await backend.close()


async def test_a_pooler_the_start_up_check_missed_is_found_by_a_lost_statement(
    pooled_factory: PostgresFactory, bouncer: PgBouncer, caplog: pytest.LogCaptureFixture
) -> None:
    """Told there is no pooler, a client prepares its statements; once another client holds
    the server session they were prepared on, the next run lands on a session without them.
    The client must switch to pooled mode, say so and retry: the call succeeds."""
    import psycopg

    backend = client(
        pooled_factory, pooled=False, prepare_threshold=0, pool_min=1, pool_max=1, listen=False
    )
    await backend.open()
    holder = await psycopg.AsyncConnection.connect(bouncer.url(), autocommit=True)
    try:
        assert await backend.count_jobs() == []  # prepared on the session it ran on
        await holder.execute("BEGIN")
        await holder.execute("SELECT 1")  # takes that session (the most recently released)
        with caplog.at_level(logging.WARNING, "conveyor.backends.postgres"):
            assert await backend.count_jobs() == []  # another session: the statement is lost
        await holder.execute("COMMIT")
        assert backend.stats()["pooled"] is True
        assert backend.stats()["prepare_threshold"] is None
        assert "serves this URL although the start-up check did not see it" in caplog.text
        await backend.enqueue([job() for _ in range(5)])
        assert len(await backend.claim("w:1:x", ["default"], 5, 30.0)) == 5
    finally:
        await holder.close()
        await backend.close()


@pytest.mark.timeout(1200)
def test_the_postgres_contract_suite_passes_through_pgbouncer() -> None:
    """``tests/contract -k postgres`` with the ``postgres`` kind behind a private PgBouncer in
    transaction mode (``CONVEYOR_TEST_POSTGRES_VIA=pgbouncer``), in a child pytest."""
    require_kind("postgres")
    env = {**os.environ, "CONVEYOR_TEST_POSTGRES_VIA": "pgbouncer"}
    env.pop("PYTEST_XDIST_WORKER", None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/contract", "-k", "postgres", "-q",
         "-p", "no:cacheprovider", "-n", "0"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )  # fmt: skip
    tail = done.stdout[-3000:] + done.stderr[-2000:]
    assert done.returncode == 0, tail
    assert " passed" in tail and not re.search(r"\b\d+ failed", tail), tail
