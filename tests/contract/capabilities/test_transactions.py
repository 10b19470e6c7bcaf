"""Contract of the transactions capability (enqueue and fenced completion inside the caller's
own database transaction, the outbox pattern): SQLite and PostgreSQL implement it, the others
say they do not, and the app refuses ``connection=`` on them with a clear error."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.backends import Backend, BackendFactory
from conveyor.backends.capabilities import SyncTransactions, Transactions, capability_names
from conveyor.domain.job import NewJob
from conveyor.domain.states import JobState
from conveyor.errors import ConfigurationError

from .._support import T
from .._support import job as new_job

HAS_TRANSACTIONS = {"sqlite", "postgres"}


@contextmanager
def native_connection(kind: str, factory: BackendFactory) -> Iterator[Any]:
    """A connection of the store's own driver, outside Conveyor (as an application holds)."""
    if kind == "sqlite":
        import sqlite3

        conn = sqlite3.connect(str(factory.path), isolation_level=None)  # type: ignore[attr-defined]
    else:
        import psycopg

        conn = psycopg.connect(factory.settings.url)  # type: ignore[attr-defined]
    try:
        yield conn
    finally:
        conn.close()


def begin(kind: str, conn: Any) -> None:
    """Open a transaction: SQLite's must be explicit (and take the write lock), psycopg's
    begins with the first statement."""
    if kind == "sqlite":
        conn.execute("BEGIN IMMEDIATE")


async def test_capability_is_declared_where_the_store_has_transactions(
    backend_kind: str, backend: Backend, backend_factory: BackendFactory
) -> None:
    expected = backend_kind in HAS_TRANSACTIONS
    assert ("transactions" in capability_names(backend)) is expected
    assert isinstance(backend, Transactions) is expected
    assert isinstance(backend_factory, SyncTransactions) is expected


async def test_enqueue_exists_only_if_the_callers_transaction_commits(
    backend_kind: str, backend: Backend, backend_factory: BackendFactory
) -> None:
    if backend_kind not in HAS_TRANSACTIONS:
        pytest.skip("no transactions on this store (checked above)")
    assert isinstance(backend_factory, SyncTransactions)
    kept, dropped = new_job(), new_job()
    with native_connection(backend_kind, backend_factory) as conn:
        begin(backend_kind, conn)
        [res] = backend_factory.enqueue_on_sync(conn, [kept], T)
        assert res.created and res.id == kept.id
        conn.commit()
        begin(backend_kind, conn)
        backend_factory.enqueue_on_sync(conn, [dropped], T)
        conn.rollback()
    assert (await backend.get_job(kept.id)) is not None
    assert (await backend.get_job(dropped.id)) is None


async def test_fenced_completion_inside_the_callers_transaction(
    backend_kind: str, backend: Backend, backend_factory: BackendFactory
) -> None:
    if backend_kind not in HAS_TRANSACTIONS:
        pytest.skip("no transactions on this store (checked above)")
    assert isinstance(backend_factory, SyncTransactions)
    job: NewJob = new_job()
    await backend.enqueue([job], T)
    [claimed] = await backend.claim("w1", ["default"], 1, 30.0, T)
    with native_connection(backend_kind, backend_factory) as conn:
        begin(backend_kind, conn)
        assert not backend_factory.complete_on_sync(conn, job.id, claimed.fence + 1, b"1", T + 1)
        conn.rollback()
        begin(backend_kind, conn)
        assert backend_factory.complete_on_sync(conn, job.id, claimed.fence, b"42", T + 1)
        conn.rollback()  # rolled back: still running
    record = await backend.get_job(job.id)
    assert record is not None and record.state is JobState.RUNNING
    with native_connection(backend_kind, backend_factory) as conn:
        begin(backend_kind, conn)
        assert backend_factory.complete_on_sync(conn, job.id, claimed.fence, b"42", T + 1)
        conn.commit()
    record = await backend.get_job(job.id)
    assert record is not None and record.state is JobState.COMPLETED and record.result == b"42"


async def test_the_app_refuses_connection_enqueue_without_the_capability(
    backend_kind: str, backend_factory: BackendFactory
) -> None:
    if backend_kind in HAS_TRANSACTIONS:
        pytest.skip("this store has transactions")
    app = Conveyor(backend_factory=backend_factory)

    @app.task
    def noop() -> None: ...

    with pytest.raises(ConfigurationError, match="supports transactions"):
        await noop.options(connection=object()).enqueue()
    await app.close()


class _Rollback(Exception):
    pass


async def test_a_handler_transaction_commits_logs_and_completion_together(
    backend_kind: str, backend: Backend
) -> None:
    """``transaction()`` + ``append_logs_on`` + ``complete_on``: what the worker does for
    ``current_job().transaction()``; an exception rolls all of it back."""
    if not isinstance(backend, Transactions):
        pytest.skip("no transactions capability on this store")
    from conveyor.domain.job import LogEntry

    jobs = [new_job(), new_job()]
    await backend.enqueue(jobs, now=T)
    claimed = {c.id: c for c in await backend.claim("w", ["default"], 2, 30, now=T)}
    kept, undone = (claimed[j.id] for j in jobs)
    entry = LogEntry(T, "info", "inside", 1)

    async with backend.transaction() as conn:
        await backend.append_logs_on(conn, kept.id, [entry])
        assert await backend.complete_on(conn, kept.id, kept.fence, b"r", now=T + 1)
    record = await backend.get_job(kept.id)
    assert record is not None and record.state is JobState.COMPLETED
    assert [e.message for e in record.logs] == ["inside"]

    with pytest.raises(_Rollback):
        async with backend.transaction() as conn:
            await backend.append_logs_on(conn, undone.id, [entry])
            assert await backend.complete_on(conn, undone.id, undone.fence, b"r", now=T + 1)
            raise _Rollback
    record = await backend.get_job(undone.id)
    assert record is not None and record.state is JobState.RUNNING and record.logs == ()
    # Inside the caller's own transaction only a held lease counts: no repeat answers true.
    async with backend.transaction() as conn:
        assert not await backend.complete_on(conn, kept.id, kept.fence, b"again", now=T + 2)
