"""Contract of publishing inside the caller's own transaction
(:class:`~conveyor.backends.capabilities.EventBusTransactions`), and of positions following
commit order: a publish that starts later but commits earlier can never be seen before one that
commits first, so a reader's cursor never skips an event."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from conveyor.backends import Backend, BackendFactory
from conveyor.backends.capabilities import (
    EventBusStore,
    EventBusTransactions,
    SyncEventBusTransactions,
    capability_names,
)
from conveyor.domain.events import EventQuery
from conveyor.domain.job import JobFilter

from .._support import T
from .test_events import SPEC, delivery, event
from .test_transactions import HAS_TRANSACTIONS, begin, native_connection


def _skip_without_transactions(kind: str) -> None:
    if kind not in HAS_TRANSACTIONS:
        pytest.skip("no transactions on this store")


async def test_capability_is_declared_where_the_store_has_transactions(
    backend_kind: str, backend: Backend, backend_factory: BackendFactory
) -> None:
    expected = backend_kind in HAS_TRANSACTIONS
    assert ("events_transactions" in capability_names(backend)) is expected
    assert isinstance(backend_factory, SyncEventBusTransactions) is expected


async def test_events_and_jobs_exist_only_if_the_callers_transaction_commits(
    backend_kind: str, backend: Backend, backend_factory: BackendFactory
) -> None:
    _skip_without_transactions(backend_kind)
    assert isinstance(backend, EventBusStore) and isinstance(backend, EventBusTransactions)
    assert isinstance(backend_factory, SyncEventBusTransactions)
    await backend.bus_subscribe("a", "#", SPEC, T)
    version = (await backend.bus_subscriptions()).version
    kept, dropped = event(), event()
    with native_connection(backend_kind, backend_factory) as conn:
        begin(backend_kind, conn)
        result = backend_factory.bus_publish_on_sync(conn, [dropped], [delivery(dropped)], version)
        assert result is not None and result[0].created
        conn.rollback()
        begin(backend_kind, conn)
        result = backend_factory.bus_publish_on_sync(conn, [kept], [delivery(kept)], version)
        assert result is not None
        conn.commit()
    assert [e.id for e in await backend.bus_read(EventQuery())] == [kept.id]
    assert len(await backend.list_jobs(JobFilter(queue="events"))) == 1


async def test_a_stale_version_is_refreshed_inside_the_transaction(
    backend_kind: str, backend: Backend, backend_factory: BackendFactory
) -> None:
    _skip_without_transactions(backend_kind)
    assert isinstance(backend, EventBusStore)
    assert isinstance(backend_factory, SyncEventBusTransactions)
    old = (await backend.bus_subscriptions()).version
    await backend.bus_subscribe("a", "#", SPEC, T)
    ev = event()
    with native_connection(backend_kind, backend_factory) as conn:
        begin(backend_kind, conn)
        assert backend_factory.bus_publish_on_sync(conn, [ev], [], old) is None
        fresh = backend_factory.bus_subscriptions_on_sync(conn)
        assert [s.name for s in fresh.subscriptions] == ["a"]
        assert backend_factory.bus_publish_on_sync(conn, [ev], [delivery(ev)], fresh.version)
        conn.commit()
    assert [e.id for e in await backend.bus_read(EventQuery())] == [ev.id]


async def _waiting_on_a_lock(factory: BackendFactory, deadline: float) -> None:
    """Wait until some session of the test database waits for a lock (the second publisher)."""
    import psycopg

    url: str = factory.settings.url  # type: ignore[attr-defined]
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            cur = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
            row = await cur.fetchone()
            if row and row[0] > 0:
                return
            await asyncio.sleep(0.01)
    raise AssertionError("the second publisher never waited for the first")


async def test_positions_follow_commit_order(
    backend_kind: str, backend: Backend, other_backend: Backend, backend_factory: BackendFactory
) -> None:
    """The first publisher holds its transaction open; a second one publishes meanwhile. The
    second cannot become visible (nor take a position) before the first commits, so a reader
    polling in between never sees the later event alone."""
    _skip_without_transactions(backend_kind)
    assert isinstance(backend, EventBusStore) and isinstance(other_backend, EventBusStore)
    assert isinstance(backend_factory, SyncEventBusTransactions)
    version = (await backend.bus_subscriptions()).version
    first, second = event(), event()
    seen: list[list[str]] = []
    with native_connection(backend_kind, backend_factory) as conn:
        begin(backend_kind, conn)
        published = backend_factory.bus_publish_on_sync(conn, [first], [], version)
        assert published is not None
        late: asyncio.Task[Any] = asyncio.create_task(
            other_backend.bus_publish([second], [], version)
        )
        if backend_kind == "postgres":
            await _waiting_on_a_lock(backend_factory, time.monotonic() + 10)
        seen.append([e.id for e in await backend.bus_read(EventQuery())])
        assert not late.done()
        conn.commit()
    result = await late
    assert result is not None
    assert published[0].position < result[0].position
    seen.append([e.id for e in await backend.bus_read(EventQuery())])
    assert seen == [[], [first.id, second.id]]
