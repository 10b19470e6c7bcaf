"""Reading the bus: the log, deliveries (seed 003's handler execution tracking), replay, the
dead-letter set of deliveries, retention.

Positions are the cursor: :meth:`BusInspection.read` returns the events after a position in
log order, and :meth:`BusInspection.follow` keeps reading as new ones commit. Because positions
follow commit order, a reader that resumes after the last position it saw (an SSE client's
``Last-Event-ID``) never skips an event.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from conveyor.bus.envelope import encode, from_record
from conveyor.bus.event import Delivery, StoredEvent, to_datetime
from conveyor.bus.subscriptions import Subscription, delivery_job
from conveyor.domain.events import (
    DeliveryFilter,
    DeliveryRecord,
    DeliveryState,
    EventQuery,
    EventRecord,
    NewDelivery,
    PatternError,
    check_pattern,
    pattern_matches,
)
from conveyor.domain.job import JobFilter
from conveyor.domain.states import JobState
from conveyor.errors import ConfigurationError, InvalidArgumentsError

if TYPE_CHECKING:
    from conveyor.backends.capabilities.events import EventBusStore
    from conveyor.bus.config import EventBusConfig
    from conveyor.bus.ports import BusHost

_PAGE = 500


@dataclass(frozen=True, slots=True)
class EventDetails:
    """One event of the log with its deliveries, one per subscription it went to."""

    event: StoredEvent
    deliveries: list[Delivery]

    def to_dict(self) -> dict[str, Any]:
        return {**self.event.to_dict(), "deliveries": [d.to_dict() for d in self.deliveries]}


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """What a replay did: events looked at, deliveries created, deliveries skipped (still
    pending, or already handled without ``force``)."""

    events: int
    delivered: int
    skipped: int

    def to_dict(self) -> dict[str, int]:
        return {"events": self.events, "delivered": self.delivered, "skipped": self.skipped}


def _seconds(value: datetime | float | None, name: str) -> float | None:
    if value is None or isinstance(value, int | float):
        return value
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidArgumentsError(f"{name} must be an aware datetime")
    return value.timestamp()


def _pattern(pattern: str | None) -> str | None:
    if pattern is None:
        return None
    try:
        return check_pattern(pattern)
    except PatternError as exc:
        raise InvalidArgumentsError(str(exc)) from None


class BusInspection:
    """The read side of :class:`~conveyor.bus.bus.EventBus` (mixed into it)."""

    if TYPE_CHECKING:  # provided by EventBus
        host: BusHost
        config: EventBusConfig

        async def store(self) -> EventBusStore: ...

        async def subscriptions(self) -> list[Subscription]: ...

    def _bus(self) -> BusInspection:
        return self

    def stored(self, record: EventRecord) -> StoredEvent:
        """A log record with its payload decoded."""
        data: Any = None
        error = None
        try:
            data = self._bus().host.serializer.loads(record.payload)
        except Exception as exc:  # noqa: BLE001 - shown, not raised
            error = str(exc)
        return StoredEvent(
            record.position,
            record.id,
            record.name,
            data,
            record.key,
            record.priority,
            record.headers,
            record.schema_version,
            to_datetime(record.occurred_at),
            to_datetime(record.stored_at),
            error,
        )

    # -- the log ------------------------------------------------------------------------------
    async def head(self) -> int:
        """The position of the last event stored (0 for an empty log)."""
        return await (await self._bus().store()).bus_head()

    def head_sync(self) -> int:
        """Blocking :meth:`head`."""
        return self._bus().host.portal.run(self.head())

    async def read(
        self,
        after: int = 0,
        limit: int = 100,
        *,
        pattern: str | None = None,
        key: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[StoredEvent]:
        """Events after position ``after`` in log order (at most ``limit``), optionally only
        those matching ``pattern``, with ``key``, or whose time is in [``since``, ``until``)."""
        pat = _pattern(pattern)
        backend = await self._bus().store()
        query = EventQuery(
            after=after,
            since=_seconds(since, "since"),
            until=_seconds(until, "until"),
            key=key,
        )
        out: list[StoredEvent] = []
        while len(out) < limit:
            page = await backend.bus_read(query, _PAGE if pat else limit - len(out))
            for record in page:
                if pat is None or pattern_matches(pat, record.name):
                    out.append(self.stored(record))
                    if len(out) >= limit:
                        break
            if not page or (pat is None and len(page) < limit):
                break
            query = replace(query, after=page[-1].position)
        return out

    def read_sync(self, after: int = 0, limit: int = 100, **filters: Any) -> list[StoredEvent]:
        """Blocking :meth:`read`."""
        return self._bus().host.portal.run(self.read(after, limit, **filters))

    async def follow(
        self,
        after: int = 0,
        *,
        pattern: str | None = None,
        poll: float = 0.2,
        stop: asyncio.Event | None = None,
    ) -> AsyncIterator[StoredEvent]:
        """Every event after position ``after``, then each new one as it commits (polling
        every ``poll`` seconds while idle), until ``stop`` is set: the position-based tail the
        realtime and webhook integrations resume from."""
        cursor = after
        while stop is None or not stop.is_set():
            page = await self.read(cursor, _PAGE, pattern=pattern)
            for event in page:
                cursor = event.position
                yield event
            if not page:
                if stop is None:
                    await asyncio.sleep(poll)
                else:
                    try:
                        await asyncio.wait_for(stop.wait(), poll)
                    except TimeoutError:
                        pass

    async def log(
        self,
        pattern: str | None = None,
        *,
        key: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
    ) -> list[StoredEvent]:
        """The newest ``limit`` events (newest last) matching the filters."""
        backend = await self._bus().store()
        head = await backend.bus_head()
        pat = _pattern(pattern)
        found: list[StoredEvent] = []
        before = head + 1
        while before > 1 and len(found) < limit:
            after = max(before - 1 - max(limit * 4, _PAGE), 0)
            query = EventQuery(
                after=after,
                before=before,
                since=_seconds(since, "since"),
                until=_seconds(until, "until"),
                key=key,
            )
            page = [
                self.stored(r)
                for r in await backend.bus_read(query, before)
                if pat is None or pattern_matches(pat, r.name)
            ]
            found = page + found
            before = after + 1
        return found[-limit:] if limit > 0 else []

    def log_sync(self, pattern: str | None = None, **filters: Any) -> list[StoredEvent]:
        """Blocking :meth:`log`."""
        return self._bus().host.portal.run(self.log(pattern, **filters))

    async def get(self, event_id: str) -> EventDetails | None:
        """One event with its deliveries, or ``None``."""
        backend = await self._bus().store()
        records = await backend.bus_get([event_id])
        if not records:
            return None
        rows = await backend.bus_deliveries(DeliveryFilter(event_id=event_id), limit=10_000)
        return EventDetails(self.stored(records[0]), [Delivery.from_record(r) for r in rows])

    def get_sync(self, event_id: str) -> EventDetails | None:
        """Blocking :meth:`get`."""
        return self._bus().host.portal.run(self.get(event_id))

    async def deliveries(
        self,
        subscription: str | None = None,
        *,
        event_id: str | None = None,
        state: DeliveryState | str | None = None,
        after: int = 0,
        limit: int = 100,
    ) -> list[Delivery]:
        """Deliveries in log order, optionally of one subscription, one event, in one state
        (``pending``, ``running``, ``failed``, ``succeeded``, ``dead``)."""
        wanted = None if state is None else DeliveryState(state)
        backend = await self._bus().store()
        flt = DeliveryFilter(event_id=event_id, subscription=subscription)
        out: list[Delivery] = []
        async for row in _delivery_rows(backend, flt, after):
            if wanted is None or row.state is wanted:
                out.append(Delivery.from_record(row))
                if len(out) >= limit:
                    break
        return out

    def deliveries_sync(self, subscription: str | None = None, **filters: Any) -> list[Delivery]:
        """Blocking :meth:`deliveries`."""
        return self._bus().host.portal.run(self.deliveries(subscription, **filters))

    # -- replay -------------------------------------------------------------------------------
    async def replay(
        self,
        *,
        subscription: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        from_event: str | None = None,
        force: bool = False,
    ) -> ReplayReport:
        """Deliver stored events again: those whose time is in [``since``, ``until``), or
        from the event ``from_event`` on, to one ``subscription`` or to all. A delivery
        already handled is skipped unless ``force``; one still pending is always skipped; one
        that died (or never existed: a subscription created after the event) is delivered."""
        bus = self._bus()
        backend = await bus.store()
        subs = await bus.subscriptions()
        if subscription is not None:
            subs = [s for s in subs if s.name == subscription]
            if not subs:
                raise ConfigurationError(f"no subscription named {subscription!r} is stored")
        after = 0
        if from_event is not None:
            start = await backend.bus_get([from_event])
            if not start:
                raise InvalidArgumentsError(f"no event with id {from_event!r} in the log")
            after = start[0].position - 1
        query = EventQuery(
            after=after, since=_seconds(since, "since"), until=_seconds(until, "until")
        )
        seen = delivered = skipped = 0
        while True:
            page = await backend.bus_read(query, _PAGE)
            batch = self._redeliveries(page, subs)
            if batch:
                now = bus.host.backend_now()
                made = await backend.bus_redeliver(batch, force=force, now=now)
                delivered += sum(1 for m in made if m is not None)
                skipped += sum(1 for m in made if m is None)
            seen += len(page)
            if len(page) < _PAGE:
                return ReplayReport(seen, delivered, skipped)
            query = replace(query, after=page[-1].position)

    def replay_sync(self, **options: Any) -> ReplayReport:
        """Blocking :meth:`replay`."""
        return self._bus().host.portal.run(self.replay(**options))

    def _redeliveries(
        self, records: Sequence[EventRecord], subs: Sequence[Subscription]
    ) -> list[NewDelivery]:
        bus = self._bus()
        serializer = bus.host.serializer
        enabled = bus.config.queue.priority_enabled
        out: list[NewDelivery] = []
        for record in records:
            env = from_record(serializer, record)
            payload = encode(serializer, env)
            undecodable = "error" in env
            for sub in subs:
                if undecodable:
                    hit = pattern_matches(sub.pattern, record.name)
                else:
                    hit = sub.matches(record.name, env["data"])
                if not hit:
                    continue
                job = delivery_job(
                    sub,
                    record.id,
                    payload,
                    record.priority,
                    enabled,
                    record.headers.get("trace_id"),
                )
                chain = record.key if sub.ordered and record.key is not None else None
                out.append(NewDelivery(record.id, sub.name, job, chain))
        return out

    # -- upkeep -------------------------------------------------------------------------------
    async def settle(self) -> int:
        """Repair ordered chains whose first delivery ended without being recorded (workers
        do this every ``settle_interval``); how many deliveries were marked dead."""
        bus = self._bus()
        return await (await bus.store()).bus_settle(now=bus.host.backend_now())

    def settle_sync(self) -> int:
        """Blocking :meth:`settle`."""
        return self._bus().host.portal.run(self.settle())

    async def prune(self, older_than: float | None = None) -> int:
        """Delete events older than ``older_than`` seconds (default: the configured
        retention) whose deliveries all finished; how many were deleted."""
        bus = self._bus()
        keep = older_than if older_than is not None else bus.config.retention
        if keep is None:
            return 0
        backend = await bus.store()
        before = bus.host.now() - keep
        total = 0
        while True:
            n = await backend.bus_prune(before, 1000)
            total += n
            if n < 1000:
                return total

    def prune_sync(self, older_than: float | None = None) -> int:
        """Blocking :meth:`prune`."""
        return self._bus().host.portal.run(self.prune(older_than))

    # -- the dead-letter set of deliveries ----------------------------------------------------
    async def dead_letters(
        self, subscription: str | None = None, *, limit: int = 100
    ) -> list[Delivery]:
        """Deliveries whose handler failed for good and whose job waits in the dead-letter
        set (labelled ``failed_events`` by default)."""
        backend = await self._bus().store()
        rows = await backend.bus_deliveries(
            DeliveryFilter(subscription=subscription, dead_letters=True), limit=limit
        )
        return [Delivery.from_record(r) for r in rows]

    def dead_letters_sync(
        self, subscription: str | None = None, *, limit: int = 100
    ) -> list[Delivery]:
        """Blocking :meth:`dead_letters`."""
        return self._bus().host.portal.run(self.dead_letters(subscription, limit=limit))

    async def retry_dead(
        self, subscription: str | None = None, *, event_ids: Sequence[str] | None = None
    ) -> list[str]:
        """Queue dead deliveries again (their jobs keep their history); the job ids."""
        ids = await self._dead_job_ids(subscription, event_ids)
        if not ids:
            return []
        backend = await self._bus().host.backend()
        flt = JobFilter(ids=tuple(ids), states=(JobState.FAILED,))
        return await backend.retry_jobs(flt, now=self._bus().host.backend_now(), limit=len(ids))

    def retry_dead_sync(
        self, subscription: str | None = None, *, event_ids: Sequence[str] | None = None
    ) -> list[str]:
        """Blocking :meth:`retry_dead`."""
        return self._bus().host.portal.run(self.retry_dead(subscription, event_ids=event_ids))

    async def purge_dead(
        self, subscription: str | None = None, *, event_ids: Sequence[str] | None = None
    ) -> int:
        """Delete the jobs of dead deliveries (the deliveries stay in the log as dead)."""
        ids = await self._dead_job_ids(subscription, event_ids)
        if not ids:
            return 0
        backend = await self._bus().host.backend()
        flt = JobFilter(ids=tuple(ids), states=(JobState.FAILED,))
        return await backend.delete_jobs(flt, limit=len(ids))

    def purge_dead_sync(
        self, subscription: str | None = None, *, event_ids: Sequence[str] | None = None
    ) -> int:
        """Blocking :meth:`purge_dead`."""
        return self._bus().host.portal.run(self.purge_dead(subscription, event_ids=event_ids))

    async def _dead_job_ids(
        self, subscription: str | None, event_ids: Sequence[str] | None
    ) -> list[str]:
        backend = await self._bus().store()
        wanted = None if event_ids is None else set(event_ids)
        flt = DeliveryFilter(subscription=subscription, dead_letters=True)
        return [
            r.job_id
            async for r in _delivery_rows(backend, flt, 0)
            if wanted is None or r.event_id in wanted
        ]


async def _delivery_rows(
    backend: EventBusStore, flt: DeliveryFilter, after: int
) -> AsyncIterator[DeliveryRecord]:
    """Every delivery matching ``flt`` after position ``after``, page by page; a page never
    ends inside one event's deliveries."""
    cursor = after
    while True:
        rows = await backend.bus_deliveries(flt, after=cursor, limit=_PAGE)
        if len(rows) < _PAGE:
            for row in rows:
                yield row
            return
        last = rows[-1].position
        whole = [r for r in rows if r.position < last]
        if not whole:  # one event with more deliveries than a page holds: all of them
            rows = await backend.bus_deliveries(flt, after=cursor, limit=1_000_000)
            whole = [r for r in rows if r.position == last]
        for row in whole:
            yield row
        cursor = whole[-1].position
