"""Faults: dropped connections, a restarting or stopped server. Calls raise
StorageUnavailableError (never a psycopg error), idempotent reads retry, the pool and the LISTEN
connection come back, and no job is lost or left running."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from conveyor.backends import factory_from_url
from conveyor.backends.postgres import PostgresFactory
from conveyor.backends.postgres.backend import PostgresBackend
from conveyor.domain.job import JobFilter
from conveyor.domain.states import JobState
from conveyor.errors import ConveyorError, StorageUnavailableError

try:
    from .test_postgres_support import (
        URL,
        blocked_waiter,
        client,
        job,
        migrated_factory,
        private_cluster,
        require_server,
        silent_proxy,
        wait_until,
    )
except ImportError:  # tests/integration is not a package
    from test_postgres_support import (  # type: ignore[no-redef]
        URL,
        blocked_waiter,
        client,
        job,
        migrated_factory,
        private_cluster,
        require_server,
        silent_proxy,
        wait_until,
    )


@pytest.fixture
async def factory() -> AsyncIterator[PostgresFactory]:
    require_server()
    async with migrated_factory() as f:
        yield f


async def terminate_sessions(url: str, schema: str) -> int:
    """Kill every server session this schema's clients hold (as a restart would)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s",
            (f"conveyor:{schema}",),
        )
        row = await cur.fetchone()
        return int(row[0]) if row else 0


async def test_killed_connections_are_replaced_transparently(factory: PostgresFactory) -> None:
    async with client(factory) as backend:
        await backend.enqueue([job() for _ in range(3)])
        assert await terminate_sessions(URL, factory.schema) >= 1
        # Reads retry; the server announced the shutdown, so writes retry too.
        assert len(await backend.list_jobs(JobFilter())) == 3
        claimed = await backend.claim("w", ["default"], 3, 30)
        assert len(claimed) == 3
        assert await terminate_sessions(URL, factory.schema) >= 1
        for c in claimed:
            assert await backend.complete(c.id, c.fence, None)
        assert {r.state for r in await backend.list_jobs(JobFilter())} == {JobState.COMPLETED}


async def test_the_listen_connection_reconnects(factory: PostgresFactory) -> None:
    async with client(factory) as waiter, client(factory) as producer:
        await waiter.wait_for_jobs(["default"], 0.01)  # starts the listener
        await wait_until(lambda: waiter.stats()["listening"])
        await terminate_sessions(URL, factory.schema)
        await wait_until(lambda: waiter.stats()["listen_reconnects"] >= 1)
        await wait_until(lambda: waiter.stats()["listening"])
        before = waiter.stats()["notify_received"]
        task = await blocked_waiter(waiter, ["default"], timeout=60.0)
        await producer.enqueue([job()])
        # The reconnected LISTEN delivers it (well before the waiter's own timeout).
        await asyncio.wait_for(task, 10.0)
        await wait_until(lambda: waiter.stats()["notify_received"] > before, 10)


# -- a private server we may stop and restart -----------------------------------------------
@pytest.fixture
def cluster() -> Any:
    with private_cluster() as c:
        yield c


async def test_a_stopped_server_gives_storage_unavailable_then_recovers(cluster: Any) -> None:
    factory = factory_from_url(cluster.url, schema="c", auto_migrate=True, timeout=2)
    async with client(factory) as backend:  # type: ignore[arg-type]
        await backend.enqueue([job()])
        await asyncio.to_thread(cluster.stop, "fast")
        started = time.monotonic()
        with pytest.raises(StorageUnavailableError) as info:
            await backend.count_jobs()
        assert time.monotonic() - started < 10
        assert "unavailable" in str(info.value)
        with pytest.raises(StorageUnavailableError):
            await backend.enqueue([job()])
        # wait_for_jobs is only a hint: it returns instead of raising.
        await backend.wait_for_jobs(["default"], 0.2)
        await asyncio.to_thread(cluster.start)

        async def works() -> bool:
            try:
                return len(await backend.list_jobs(JobFilter())) == 1
            except StorageUnavailableError:
                return False

        await wait_until(works, timeout=30, interval=0.2)
        await backend.enqueue([job()])
        assert sum(r.count for r in await backend.count_jobs()) == 2


async def test_a_restart_under_load_loses_no_job(cluster: Any) -> None:
    """Producers and workers run through a fast restart: every acknowledged enqueue is
    completed in the end, nothing is stuck in running, and errors are Conveyor's own."""
    factory = factory_from_url(cluster.url, schema="load", auto_migrate=True, timeout=3)
    acked: set[str] = set()
    completed: dict[str, int] = {}
    foreign: list[BaseException] = []
    stop = asyncio.Event()

    async def producer(backend: PostgresBackend) -> None:
        while not stop.is_set():
            batch = [job() for _ in range(5)]
            try:
                results = await backend.enqueue(batch)
                acked.update(r.id for r in results)
            except ConveyorError:
                await asyncio.sleep(0.05)
            except BaseException as exc:  # anything else is a bug
                foreign.append(exc)
                raise
            await asyncio.sleep(0)

    async def worker(backend: PostgresBackend, name: str) -> None:
        while True:
            try:
                claimed = await backend.claim(name, ["default"], 5, 2.0)
                for c in claimed:
                    if await backend.complete(c.id, c.fence, None):
                        completed[c.id] = completed.get(c.id, 0) + 1
                if not claimed:
                    if stop.is_set():
                        await backend.recover_expired(50)
                        if not await backend.list_jobs(
                            JobFilter(states=(JobState.QUEUED, JobState.RUNNING)), limit=1
                        ):
                            return
                    await backend.wait_for_jobs(["default"], 0.2)
            except ConveyorError:
                await asyncio.sleep(0.05 + random.random() * 0.05)
            except BaseException as exc:
                foreign.append(exc)
                raise

    async with client(factory) as p, client(factory) as w1, client(factory) as w2:  # type: ignore[arg-type]
        tasks = [
            asyncio.create_task(producer(p)),
            asyncio.create_task(worker(w1, "w1")),
            asyncio.create_task(worker(w2, "w2")),
        ]
        await wait_until(lambda: len(completed) >= 100, timeout=30)
        await asyncio.to_thread(cluster.restart, "fast")
        await wait_until(lambda: len(acked) >= len(completed) + 100, timeout=30)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)

        assert not foreign
        assert acked and acked <= set(completed)
        records = await w1.list_jobs(JobFilter(), limit=100_000)
        assert {r.state for r in records} == {JobState.COMPLETED}
        assert acked <= {r.id for r in records}
        print(
            f"restart under load: {len(acked)} acked, {len(completed)} completed, "
            f"{sum(completed.values()) - len(completed)} completed twice"
        )
        assert all(n == 1 for n in completed.values())


async def test_connections_that_go_silent_are_replaced() -> None:
    """Every open connection stops answering without an error (no FIN, no RST): calls give
    up after ``command_timeout``, the pool and the LISTEN connection are replaced, and the
    client carries on with fresh connections."""
    require_server()
    async with silent_proxy() as proxy, migrated_factory(URL) as direct:
        factory = factory_from_url(
            proxy.url, schema=direct.schema, command_timeout=1.0, poll_interval=0.2
        )
        async with client(factory) as backend, client(direct) as producer:  # type: ignore[arg-type]
            await backend.enqueue([job()])
            await backend.wait_for_jobs(["other"], 0.05)  # starts the LISTEN connection
            await wait_until(lambda: backend.stats()["listening"])
            proxy.freeze()
            started = time.monotonic()
            # A read retries on a fresh connection once the silent one timed out.
            assert sum(r.count for r in await backend.count_jobs()) == 1
            assert time.monotonic() - started >= 1.0  # it waited out command_timeout first
            # Enqueue is safe to repeat, so it retries too.
            await backend.enqueue([job()])
            claimed = await backend.claim("w", ["default"], 5, 30)
            assert len(claimed) == 2
            # The LISTEN connection was replaced as well: a waiter wakes on a notification.
            await wait_until(lambda: backend.stats()["listening"], timeout=10)
            before = backend.stats()["notify_received"]
            task = await blocked_waiter(backend, ["default"], timeout=60.0)
            await producer.enqueue([job()])
            await asyncio.wait_for(task, 10.0)
            await wait_until(lambda: backend.stats()["notify_received"] > before, 10)


async def test_a_write_that_gets_no_reply_raises_storage_unavailable() -> None:
    require_server()
    async with silent_proxy() as proxy, migrated_factory(URL) as direct:
        factory = factory_from_url(proxy.url, schema=direct.schema, command_timeout=0.5)
        async with client(factory) as backend:  # type: ignore[arg-type]
            await backend.enqueue([job()])
            proxy.freeze()
            with pytest.raises(StorageUnavailableError, match=r"did not answer within 0\.5s"):
                await backend.claim("w", ["default"], 1, 30)

            # The next call runs on a fresh connection; the silent claim never reached the
            # server, so the job is still there to claim.
            async def claimed() -> bool:
                try:
                    return len(await backend.claim("w", ["default"], 1, 30)) == 1
                except StorageUnavailableError:
                    return False

            await wait_until(claimed, timeout=10, interval=0.1)
