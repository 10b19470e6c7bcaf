"""The transactions capability: enqueue and fenced completion inside the caller's own open
database transaction (the outbox pattern), so a job exists exactly when the caller's writes
commit. ``conn`` is the store's own connection type (a ``psycopg`` or ``sqlite3`` connection)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from conveyor.domain.job import EnqueueResult, NewJob


class Transactions(ABC):
    """Implemented by backend clients whose store has transactions a caller can share."""

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
