"""Transactional enqueue (the outbox pattern) and transactional completion on PostgreSQL."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from conveyor.backends.postgres import PostgresFactory
from conveyor.backends.postgres.backend import PostgresBackend
from conveyor.backends.postgres.tx import complete_on, enqueue_on, enqueue_on_sync
from conveyor.domain.states import JobState

try:
    from .test_postgres_support import (
        URL,
        T,
        blocked_waiter,
        client,
        job,
        lock_waiters,
        migrated_factory,
        require_server,
        wait_until,
    )
except ImportError:  # tests/integration is not a package
    from test_postgres_support import (  # type: ignore[no-redef]
        URL,
        T,
        blocked_waiter,
        client,
        job,
        lock_waiters,
        migrated_factory,
        require_server,
        wait_until,
    )


@pytest.fixture
async def factory() -> AsyncIterator[PostgresFactory]:
    require_server()
    async with migrated_factory() as f:
        async with await psycopg.AsyncConnection.connect(URL, autocommit=True) as conn:
            await conn.execute(
                f'CREATE TABLE "{f.schema}".orders (id serial PRIMARY KEY, note text NOT NULL)'
            )
        yield f


@pytest.fixture
async def backend(factory: PostgresFactory) -> AsyncIterator[PostgresBackend]:
    async with client(factory) as b:
        yield b


async def orders(factory: PostgresFactory) -> list[str]:
    async with await psycopg.AsyncConnection.connect(URL, autocommit=True) as conn:
        cur = await conn.execute(f'SELECT note FROM "{factory.schema}".orders ORDER BY id')
        return [r[0] for r in await cur.fetchall()]


# -- transactional enqueue --------------------------------------------------------------------
async def test_async_outbox_commit_stores_the_job_with_the_business_row(
    backend: PostgresBackend, factory: PostgresFactory
) -> None:
    new = job()
    async with await psycopg.AsyncConnection.connect(URL) as conn:
        await conn.execute(f'INSERT INTO "{factory.schema}".orders (note) VALUES (%s)', ("a",))
        [result] = await enqueue_on(conn, [new], schema=factory.schema)
        assert result.created and result.state is JobState.QUEUED
        # Not visible to anyone else before the commit.
        assert await backend.get_job(new.id) is None
        await conn.commit()
    assert (await backend.get_job(new.id)) is not None
    assert await orders(factory) == ["a"]


async def test_async_outbox_rollback_leaves_no_job(
    backend: PostgresBackend, factory: PostgresFactory
) -> None:
    new = job()
    async with await psycopg.AsyncConnection.connect(URL) as conn:
        await conn.execute(f'INSERT INTO "{factory.schema}".orders (note) VALUES (%s)', ("a",))
        await enqueue_on(conn, [new], schema=factory.schema)
        await conn.rollback()
    assert await backend.get_job(new.id) is None
    assert await orders(factory) == []
    assert await backend.count_jobs() == []


async def test_async_outbox_inside_a_transaction_block(
    backend: PostgresBackend, factory: PostgresFactory
) -> None:
    kept, dropped = job(), job()
    async with await psycopg.AsyncConnection.connect(URL, autocommit=True) as conn:
        async with conn.transaction():
            await backend.enqueue_on(conn, [kept])
        with pytest.raises(ZeroDivisionError):
            async with conn.transaction():
                await backend.enqueue_on(conn, [dropped])
                raise ZeroDivisionError
    assert await backend.get_job(kept.id) is not None
    assert await backend.get_job(dropped.id) is None


def test_sync_outbox_commit_and_rollback(factory: PostgresFactory) -> None:
    kept, dropped = job(), job()
    with psycopg.connect(URL) as conn:
        conn.execute(f'INSERT INTO "{factory.schema}".orders (note) VALUES (%s)', ("kept",))
        [result] = factory.enqueue_on_sync(conn, [kept])
        assert result.created
        conn.commit()
        conn.execute(f'INSERT INTO "{factory.schema}".orders (note) VALUES (%s)', ("dropped",))
        enqueue_on_sync(conn, [dropped], schema=factory.schema)
        conn.rollback()

    async def check() -> tuple[bool, bool]:
        async with client(factory) as b:
            return (await b.get_job(kept.id) is not None, await b.get_job(dropped.id) is None)

    assert asyncio.run(check()) == (True, True)
    assert asyncio.run(orders(factory)) == ["kept"]


def test_sync_outbox_on_an_autocommit_connection_is_one_transaction(
    factory: PostgresFactory,
) -> None:
    jobs = [job(idempotency_key="k"), job(idempotency_key="k"), job()]
    with psycopg.connect(URL, autocommit=True) as conn:
        results = factory.enqueue_on_sync(conn, jobs)
    assert [r.created for r in results] == [True, False, True]
    assert results[1].id == jobs[0].id


async def test_outbox_commit_wakes_a_waiting_worker_and_rollback_does_not(
    factory: PostgresFactory,
) -> None:
    async with client(factory) as waiter, client(factory) as other:
        await waiter.wait_for_jobs(["outbox"], 0.01)  # starts the listener
        await wait_until(lambda: waiter.stats()["listening"], 10, message="LISTEN")

        async def flushed() -> int:
            """Notifications are delivered in commit order: once one sent now has arrived,
            any committed before it has too. The count received by then."""
            before = waiter.stats()["notify_received"]
            await other._send_notify(other.jobs_channel, "marker")
            await wait_until(lambda: waiter.stats()["notify_received"] > before, 10)
            return int(waiter.stats()["notify_received"])

        # Rolled back: the notification is dropped with the transaction.
        start = await flushed()
        async with await psycopg.AsyncConnection.connect(URL) as conn:
            await enqueue_on(conn, [job(queue="outbox")], schema=factory.schema)
            await conn.rollback()
        assert await flushed() == start + 1  # only the marker came

        # Committed: delivered at commit, not before.
        waiting = await blocked_waiter(waiter, ["outbox"], timeout=60.0)
        async with await psycopg.AsyncConnection.connect(URL) as conn:
            await enqueue_on(conn, [job(queue="outbox")], schema=factory.schema)
            before = await flushed()
            assert not waiting.done()
            await conn.commit()
        await asyncio.wait_for(waiting, 10.0)
        assert await flushed() == before + 2  # the commit's, then the marker


async def test_an_open_outbox_transaction_holds_its_idempotency_key(
    backend: PostgresBackend, factory: PostgresFactory
) -> None:
    first = job(idempotency_key="order:1")
    async with await psycopg.AsyncConnection.connect(URL) as conn:
        await enqueue_on(conn, [first], schema=factory.schema)
        # A concurrent enqueue of the same key waits for the transaction's outcome...
        second = asyncio.create_task(backend.enqueue([job(idempotency_key="order:1")]))
        await wait_until(lambda: lock_waiters(factory.schema), 10, message="a blocked enqueue")
        assert not second.done()
        await conn.commit()
    [result] = await asyncio.wait_for(second, 5.0)
    # ...and then finds the committed job.
    assert not result.created and result.id == first.id


async def test_after_a_rolled_back_outbox_the_key_is_free(
    backend: PostgresBackend, factory: PostgresFactory
) -> None:
    async with await psycopg.AsyncConnection.connect(URL) as conn:
        await enqueue_on(conn, [job(idempotency_key="order:2")], schema=factory.schema)
        second = asyncio.create_task(backend.enqueue([job(idempotency_key="order:2")]))
        await wait_until(lambda: lock_waiters(factory.schema), 10, message="a blocked enqueue")
        await conn.rollback()
    [result] = await asyncio.wait_for(second, 5.0)
    assert result.created


# -- transactional completion ----------------------------------------------------------------
async def test_complete_on_commits_with_the_handlers_writes(
    backend: PostgresBackend, factory: PostgresFactory
) -> None:
    await backend.enqueue([job()], now=T)
    [claimed] = await backend.claim("w", ["default"], 1, 30, T)
    async with backend.connection() as conn, conn.transaction():
        await conn.execute(f'INSERT INTO "{factory.schema}".orders (note) VALUES (%s)', ("x",))
        assert await backend.complete_on(conn, claimed.id, claimed.fence, b"ok", T + 1)
        record = await backend.get_job(claimed.id)
        assert record is not None and record.state is JobState.RUNNING  # not yet committed
    record = await backend.get_job(claimed.id)
    assert record is not None and record.state is JobState.COMPLETED and record.result == b"ok"
    assert await orders(factory) == ["x"]


async def test_complete_on_rollback_leaves_the_job_running_and_no_writes(
    backend: PostgresBackend, factory: PostgresFactory
) -> None:
    await backend.enqueue([job()], now=T)
    [claimed] = await backend.claim("w", ["default"], 1, 30, T)
    async with backend.connection() as conn:
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await conn.execute(
                    f'INSERT INTO "{factory.schema}".orders (note) VALUES (%s)', ("x",)
                )
                await complete_on(conn, claimed.id, claimed.fence, b"ok", schema=factory.schema)
                raise RuntimeError("the handler failed after its writes")
    record = await backend.get_job(claimed.id)
    assert record is not None and record.state is JobState.RUNNING
    assert await orders(factory) == []
    # The worker can still finish the attempt normally.
    assert await backend.complete(claimed.id, claimed.fence, None, T + 2)


async def test_complete_on_with_a_stale_fence_changes_nothing(
    backend: PostgresBackend, factory: PostgresFactory
) -> None:
    await backend.enqueue([job()], now=T)
    [old] = await backend.claim("w", ["default"], 1, 5, T)
    await backend.recover_expired(3, now=T + 10)
    [new] = await backend.claim("w2", ["default"], 1, 30, T + 11)
    async with backend.connection() as conn, conn.transaction():
        assert not await backend.complete_on(conn, old.id, old.fence, b"zombie", T + 12)
    record = await backend.get_job(new.id)
    assert record is not None and record.state is JobState.RUNNING and record.fence == new.fence


_CRASHING_HANDLER = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    import psycopg
    from conveyor.backends import factory_from_url
    from conveyor.backends.postgres.tx import complete_on

    async def main():
        url, schema, where = sys.argv[1], sys.argv[2], sys.argv[3]
        backend = factory_from_url(url, schema=schema).create()
        await backend.open()
        [claimed] = await backend.claim("doomed", ["default"], 1, 1.0)
        async with backend.connection() as conn:
            await conn.execute("BEGIN")
            await conn.execute(
                f'INSERT INTO "{schema}".orders (note) VALUES (%s)', (claimed.id,)
            )
            if where == "after-complete":
                assert await complete_on(conn, claimed.id, claimed.fence, b"r", schema=schema)
            print("ready", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("where", ["after-writes", "after-complete"])
async def test_kill_9_between_writes_and_commit_gives_exactly_one_effect(
    backend: PostgresBackend, factory: PostgresFactory, where: str
) -> None:
    """A worker killed inside the handler's transaction (after its writes, before or after the
    fenced completion, but before COMMIT) leaves no trace; the recovered job runs again and its
    effect is recorded exactly once."""
    new = job()
    await backend.enqueue([new])
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CRASHING_HANDLER,
        URL,
        factory.schema,
        where,
        stdout=subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    assert out.strip() == b"ready" and proc.returncode == -signal.SIGKILL

    # The dead session's transaction is rolled back by the server; wait for the lease.
    async def recovered() -> list[Any]:
        return await backend.recover_expired(3)

    await wait_until(recovered, 10, message="the dead session's job to be recovered")
    assert await orders(factory) == []

    [again] = await backend.claim("healthy", ["default"], 1, 30)
    assert again.id == new.id and again.attempt == 2
    async with backend.connection() as conn, conn.transaction():
        await conn.execute(f'INSERT INTO "{factory.schema}".orders (note) VALUES (%s)', (again.id,))
        assert await backend.complete_on(conn, again.id, again.fence, b"r")
    assert await orders(factory) == [new.id]
    record = await backend.get_job(new.id)
    assert record is not None and record.state is JobState.COMPLETED and record.stalls == 1
