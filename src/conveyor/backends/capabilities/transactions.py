"""The transactions capability: enqueue and fenced completion inside the caller's own open
database transaction (the outbox pattern), so a job exists exactly when the caller's writes
commit. ``conn`` is the store's own connection type (a ``psycopg`` or ``sqlite3`` connection)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from conveyor.domain.job import EnqueueResult, LogEntry, NewJob


class Transactions(ABC):
    """Implemented by backend clients whose store has transactions a caller can share.

    The worker uses :meth:`transaction`, :meth:`append_logs_on` and :meth:`complete_on` for
    ``current_job().transaction()``: the handler writes through the connection, then the job's
    log lines and its completion go into the same transaction, and it commits (or rolls back)
    as one.
    """

    @abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Any]:
        """A new connection to the store with a transaction open on it (``async with``): it
        commits when the block exits normally and rolls back when it raises, then the
        connection is released. The store's own connection type (``psycopg``'s async
        connection, ``sqlite3.Connection``)."""

    @abstractmethod
    async def append_logs_on(self, conn: Any, job_id: str, entries: Sequence[LogEntry]) -> None:
        """:meth:`~conveyor.backends.base.Backend.append_logs` inside the open transaction of
        ``conn``."""

    @abstractmethod
    async def enqueue_on(
        self, conn: Any, jobs: Sequence[NewJob], now: float | None = None
    ) -> list[EnqueueResult]:
        """Store ``jobs`` inside the open transaction of ``conn``; they exist once it commits."""

    @abstractmethod
    async def complete_on(
        self, conn: Any, job_id: str, fence: int, result: bytes | None, now: float | None = None
    ) -> bool:
        """Fenced completion inside the open transaction of ``conn``; ``False`` if the lease is
        not held (the caller should roll back)."""


class SyncTransactions(ABC):
    """The blocking twins, implemented by the factory (no event loop needed)."""

    @abstractmethod
    def enqueue_on_sync(
        self, conn: Any, jobs: Sequence[NewJob], now: float | None = None
    ) -> list[EnqueueResult]:
        """Blocking :meth:`Transactions.enqueue_on`."""

    @abstractmethod
    def complete_on_sync(
        self, conn: Any, job_id: str, fence: int, result: bytes | None, now: float | None = None
    ) -> bool:
        """Blocking :meth:`Transactions.complete_on`."""
