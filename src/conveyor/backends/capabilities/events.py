"""The event-bus capability: an append-only event log whose positions follow commit order,
subscriptions stored with the position they start after, and publishing as one atomic step
that stores the events and one delivery job per matching subscription.

The core (:mod:`conveyor.bus`) matches events to subscriptions and builds each delivery's job;
the store checks, atomically with the write, that it matched against the current set of
subscriptions (``version``), so a subscription created concurrently with a publish either
gets its deliveries or was created after the events (its ``position`` says so). Deliveries
run as ordinary jobs (retries, timeouts, leases, fencing, the dead-letter set); the store keeps
per (event, subscription) whether the handler succeeded or failed for good, and releases the
next delivery of an ordered chain when one ends.

Names and rules are in :mod:`conveyor.domain.events`. The memory backend is the reference.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from conveyor.domain.events import (
    DeliveryFilter,
    DeliveryRecord,
    DeliveryStatus,
    EventQuery,
    EventRecord,
    NewDelivery,
    NewEvent,
    PublishResult,
    SubscriptionRecord,
    SubscriptionSet,
)


class EventBusStore(ABC):
    """Implemented by backend clients that store the event bus (all four backends)."""

    # -- subscriptions ------------------------------------------------------------------------
    @abstractmethod
    async def bus_subscriptions(self) -> SubscriptionSet:
        """Every subscription, by name, and the version of the set."""

    @abstractmethod
    async def bus_subscribe(
        self, name: str, pattern: str, spec: dict[str, Any], now: float | None = None
    ) -> tuple[SubscriptionRecord, bool]:
        """Create or update a subscription; ``(record, changed)``.

        New: its position is the log's head now (it gets only the events stored after it).
        Existing with the same pattern and spec: nothing changes. Existing otherwise: pattern
        and spec are replaced, the position kept. Any change bumps the set's version.
        """

    @abstractmethod
    async def bus_unsubscribe(self, name: str) -> bool:
        """Delete a subscription (its deliveries stay); ``False`` if there was none."""

    # -- publishing ---------------------------------------------------------------------------
    @abstractmethod
    async def bus_publish(
        self,
        events: Sequence[NewEvent],
        deliveries: Sequence[NewDelivery],
        version: int,
        now: float | None = None,
    ) -> list[PublishResult] | None:
        """Store events and their deliveries in one atomic step; ``None`` (nothing stored) if
        the subscription set is no longer at ``version``.

        Each event gets the next position (in commit order). An event whose id is stored
        already is not stored again and its deliveries are dropped (its result says
        ``created=False``): publishing is idempotent on the event id. A delivery with a
        ``chain`` whose chain has an unfinished delivery gets its job stored ``blocked``.
        """

    @abstractmethod
    async def bus_redeliver(
        self, deliveries: Sequence[NewDelivery], *, force: bool = False, now: float | None = None
    ) -> list[str | None]:
        """Deliver stored events again (replay); per delivery, the id of the job created, or
        ``None`` when it was skipped.

        Skipped: a delivery that is live with its job unfinished (it will run anyway), and,
        unless ``force``, one already handled. Otherwise the delivery gets ``job`` as its job
        (status live, joining its chain at the end). An event no longer stored is skipped.
        """

    @abstractmethod
    async def bus_finish(
        self, job_id: str, status: DeliveryStatus, now: float | None = None
    ) -> bool:
        """Record that the delivery run by ``job_id`` was handled or is dead; if it was in an
        ordered chain, release the next one. ``False`` if no delivery has that job or it was
        already handled (a repeat)."""

    @abstractmethod
    async def bus_settle(self, limit: int = 1000, now: float | None = None) -> int:
        """Repair ordered chains whose first delivery's job ended without
        :meth:`bus_finish` (a worker died, a timeout, a cancellation, a purge): mark such
        deliveries dead and release the next of each chain. Returns how many were marked."""

    # -- reading ------------------------------------------------------------------------------
    @abstractmethod
    async def bus_head(self) -> int:
        """The position of the last event stored (0 when none was)."""

    @abstractmethod
    async def bus_read(self, query: EventQuery, limit: int = 100) -> list[EventRecord]:
        """Events matching ``query`` in position order, at most ``limit``."""

    @abstractmethod
    async def bus_get(self, event_ids: Sequence[str]) -> list[EventRecord]:
        """The stored events among ``event_ids``, in position order."""

    @abstractmethod
    async def bus_deliveries(
        self, flt: DeliveryFilter, *, after: int = 0, limit: int = 100
    ) -> list[DeliveryRecord]:
        """Deliveries matching ``flt`` of events after position ``after``, in (position,
        subscription) order, with their job's state, attempts and last error."""

    # -- retention ----------------------------------------------------------------------------
    @abstractmethod
    async def bus_prune(self, before: float, limit: int = 1000) -> int:
        """Delete events stored before ``before`` none of whose deliveries is live, with their
        deliveries; returns how many events were deleted. Positions are never reused."""


class EventBusTransactions(ABC):
    """Publishing inside the caller's own open database transaction (the outbox pattern):
    the events and their delivery jobs exist if and only if it commits. ``conn`` is the
    store's connection type. SQLite and PostgreSQL; the factory implements the blocking
    twin."""

    @abstractmethod
    async def bus_publish_on(
        self,
        conn: Any,
        events: Sequence[NewEvent],
        deliveries: Sequence[NewDelivery],
        version: int,
        now: float | None = None,
    ) -> list[PublishResult] | None:
        """:meth:`EventBusStore.bus_publish` inside ``conn``'s transaction. ``None``: the
        subscription set moved on; the subscriptions may then be read again on ``conn``
        (:meth:`bus_subscriptions_on`), whose transaction now keeps them from changing."""

    @abstractmethod
    async def bus_subscriptions_on(self, conn: Any) -> SubscriptionSet:
        """:meth:`EventBusStore.bus_subscriptions` read through ``conn`` and, until its
        transaction ends, kept from changing."""


class SyncEventBusTransactions(ABC):
    """The blocking twins of :class:`EventBusTransactions` (implemented by the factory)."""

    @abstractmethod
    def bus_publish_on_sync(
        self,
        conn: Any,
        events: Sequence[NewEvent],
        deliveries: Sequence[NewDelivery],
        version: int,
        now: float | None = None,
    ) -> list[PublishResult] | None:
        """Blocking :meth:`EventBusTransactions.bus_publish_on`."""

    @abstractmethod
    def bus_subscriptions_on_sync(self, conn: Any) -> SubscriptionSet:
        """Blocking :meth:`EventBusTransactions.bus_subscriptions_on`."""
