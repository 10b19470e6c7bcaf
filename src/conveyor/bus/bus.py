"""The event bus (``app.bus``): typed events, subscriptions, publishing.

::

    @app.bus.event("order.created")
    @dataclass
    class OrderCreated:
        order_id: int
        total: float

    @app.bus.subscribe("order.*", name="billing", retry=5, timeout="30s")
    async def bill(event: Event[OrderCreated]) -> None: ...

    await app.bus.publish(OrderCreated(order_id=42, total=99.5), key="order-42")

Publishing stores the event in the log and, in the same atomic step, one delivery job per
matching subscription (see :mod:`conveyor.backends.capabilities.events`); workers run those
jobs with the subscription's retries, timeout and concurrency, and a delivery that fails for
good lands in the dead-letter set labelled ``failed_events``. Inspection, replay and the
dead-letter set are in :mod:`conveyor.bus.inspect`; event sourcing in
:mod:`conveyor.bus.sourcing`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from conveyor.backends.capabilities import require
from conveyor.backends.capabilities.events import (
    EventBusStore,
    EventBusTransactions,
    SyncEventBusTransactions,
)
from conveyor.bus.config import EventBusConfig
from conveyor.bus.delivery import lifecycle_listener, make_deliver
from conveyor.bus.envelope import encode, envelope
from conveyor.bus.event import Event, Published
from conveyor.bus.inspect import BusInspection
from conveyor.bus.ports import BusHost
from conveyor.bus.sourcing import EventStore
from conveyor.bus.subscriptions import (
    TASK_PREFIX,
    Declared,
    Subscription,
    check_declaration,
    delivery_job,
    normalize_filters,
)
from conveyor.bus.types import EventTypes, Upcaster
from conveyor.core.serialization import check_metadata
from conveyor.domain.durations import Duration, optional_duration
from conveyor.domain.events import (
    NewDelivery,
    NewEvent,
    PatternError,
    PublishResult,
    SubscriptionSet,
    check_event_name,
)
from conveyor.domain.ids import new_job_id
from conveyor.domain.priority import parse_priority
from conveyor.domain.retry import RetryPolicy
from conveyor.errors import (
    BackendError,
    ConfigurationError,
    InvalidArgumentsError,
    InvalidEventError,
)

log = logging.getLogger("conveyor.bus")

C = TypeVar("C", bound=type)
F = TypeVar("F", bound=Callable[..., Any])

_MISSING: Any = object()
_STALE_ROUNDS = 10


@dataclass(frozen=True, slots=True)
class _Draft:
    """One event ready to store: the store's record, the payload value (for filters) and the
    envelope every delivery job of it carries."""

    new: NewEvent
    payload: Any
    envelope: bytes
    trace_id: str | None


class EventBus(BusInspection):
    """The event bus of one app (``app.bus``)."""

    def __init__(self, host: BusHost) -> None:
        self.host = host
        self.config = EventBusConfig()
        self.types = EventTypes()
        self.declared: dict[str, Declared] = {}
        self._subscriptions: SubscriptionSet | None = None
        self._synced = False
        self._configured = False
        self._dead_listener = lifecycle_listener(self)
        self.streams = EventStore(self)

    def __repr__(self) -> str:
        return f"<EventBus subscriptions={sorted(self.declared)}>"

    # -- configuration ------------------------------------------------------------------------
    def configure(self, config: EventBusConfig | Mapping[str, Any]) -> EventBusConfig:
        """Set the bus configuration (seed 003's ``EventBusConfig`` shape; see
        :mod:`conveyor.bus.config`). Call it before declaring subscriptions."""
        built = EventBusConfig.build(config)
        if self.declared and built.queue.name != self.config.queue.name:
            raise ConfigurationError("configure the bus (its queue) before declaring subscriptions")
        self.config = built
        self._configured = True
        self.streams.configure(built.event_sourcing)
        if built.lifecycle:
            from conveyor.bus.lifecycle import LifecycleBridge

            LifecycleBridge(self, built.lifecycle).install()
        return built

    @property
    def active(self) -> bool:
        """Whether a worker should run the bus's upkeep (subscriptions declared or the bus
        configured)."""
        return bool(self.declared) or self._configured

    async def run(self, stop: asyncio.Event) -> None:
        """The bus's upkeep in a worker (see :mod:`conveyor.bus.runtime`), until ``stop``."""
        from conveyor.bus.runtime import run

        await run(self, stop)

    async def store(self) -> EventBusStore:
        """The app's backend client for this loop, as an event-bus store."""
        backend = await self.host.backend()
        require(backend, EventBusStore, "the event bus")
        assert isinstance(backend, EventBusStore)
        return backend

    # -- declaring ----------------------------------------------------------------------------
    def event(self, name: str, *, version: int = 1) -> Callable[[C], C]:
        """Declare a dataclass or pydantic model as the payload type of events ``name``."""

        def decorate(cls: C) -> C:
            self.types.declare(name, cls, version)
            return cls

        return decorate

    def upcaster(self, name: str, *, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Declare how a stored payload of ``from_version`` becomes ``from_version + 1``."""

        def decorate(fn: Upcaster) -> Upcaster:
            self.types.add_upcaster(name, from_version, fn)
            return fn

        return decorate

    def subscribe(
        self,
        pattern: str,
        *,
        name: str | None = None,
        where: Mapping[str, Any] | None = None,
        ordered: bool = True,
        queue: str | None = None,
        retry: RetryPolicy | int | None = None,
        timeout: Duration | None = None,
        concurrency: int | None = None,
        priority: int | str | None = None,
    ) -> Callable[[F], F]:
        """Subscribe the decorated handler (``async def`` or plain, taking one
        :class:`~conveyor.bus.event.Event`) to events matching ``pattern``.

        ``pattern``: dotted names where ``*`` is exactly one segment and ``#`` zero or more
        (``order.*``, ``order.#``, ``#``). ``name``: the subscription's name, tracked
        separately (default: the handler's dotted path). ``where``: payload filters,
        ``{"field.path": value or [values]}``. ``ordered``: events with the same key are
        handled one at a time in publish order (default); events without a key are never
        ordered. ``retry``, ``timeout``, ``concurrency``: as for tasks, per delivery.
        ``priority``: a fixed priority for its deliveries (default: the event's).
        The handler is returned unchanged.
        """
        filters = normalize_filters(where)
        check_declaration(pattern, filters, self.types)
        try:
            fixed = None if priority is None else parse_priority(priority)
        except ValueError as exc:
            raise ConfigurationError(f"subscription on {pattern!r}: {exc}") from None
        seconds = optional_duration(timeout, field="timeout")

        def decorate(handler: F) -> F:
            from conveyor.core.app import default_task_name

            sub_name = name or default_task_name(handler)
            if not isinstance(sub_name, str) or not sub_name or "\x00" in sub_name:
                raise ConfigurationError("a subscription name must be a non-empty string")
            if sub_name in self.declared:
                raise ConfigurationError(f"a subscription named {sub_name!r} is already declared")
            lane = queue or self.config.queue.name
            self._declare_queue(lane)
            task_name = TASK_PREFIX + sub_name
            task = self.host.declare_task(
                make_deliver(self, sub_name, handler),
                name=task_name,
                queue=lane,
                retry=retry,
                timeout=seconds,
                concurrency=concurrency,
                executor="async",
            )
            policy = self.host.retry_policy_for(task, lane)
            spec = {
                "task": task_name,
                "queue": lane,
                "filters": filters,
                "ordered": bool(ordered),
                "attempts": policy.attempts,
                "timeout": task.config.timeout
                if task.config.timeout is not None
                else (self.host.timeout),
                "priority": fixed,
                "handler": f"{handler.__module__}.{handler.__qualname__}",
            }
            self.declared[sub_name] = Declared(sub_name, pattern, handler, spec, task_name)
            for kind in ("dead", "cancelled"):
                self.host.events.on(kind, self._dead_listener, task=task_name)
            self._synced = False
            return handler

        return decorate

    def _declare_queue(self, name: str) -> None:
        """Give the bus queue its settings unless the app declared that queue itself."""
        if name in self.host.queues:
            return
        cfg = self.config.queue
        self.host.queue(
            name,
            concurrency=cfg.concurrency if name == cfg.name else None,
            dead_letter=cfg.dead_letter_queue,
        )

    # -- subscriptions in the store ------------------------------------------------------------
    async def sync(self) -> list[Subscription]:
        """Store the subscriptions declared in this process (new ones start at the log's
        head); returns them as stored. Workers and the first publish do this by themselves."""
        backend = await self.store()
        out = []
        now = self.host.backend_now()
        for d in list(self.declared.values()):
            record, changed = await backend.bus_subscribe(d.name, d.pattern, d.spec, now)
            if changed:
                log.info(
                    "subscription %s on %r stored (starts after position %d)",
                    d.name,
                    d.pattern,
                    record.position,
                )
            out.append(Subscription.from_record(record, declared=True))
        self._synced = True
        self._subscriptions = None
        return out

    def sync_sync(self) -> list[Subscription]:
        """Blocking :meth:`sync`."""
        return self.host.portal.run(self.sync())

    async def subscriptions(self) -> list[Subscription]:
        """Every subscription in the store (declared here or elsewhere)."""
        backend = await self.store()
        found = await backend.bus_subscriptions()
        self._subscriptions = found
        return [Subscription.from_record(r, r.name in self.declared) for r in found.subscriptions]

    def subscriptions_sync(self) -> list[Subscription]:
        """Blocking :meth:`subscriptions`."""
        return self.host.portal.run(self.subscriptions())

    async def unsubscribe(self, name: str) -> bool:
        """Delete a stored subscription (a removed handler keeps getting deliveries until
        then); its past deliveries stay in the log. ``False`` if there was none."""
        backend = await self.store()
        self._subscriptions = None
        return await backend.bus_unsubscribe(name)

    def unsubscribe_sync(self, name: str) -> bool:
        """Blocking :meth:`unsubscribe`."""
        return self.host.portal.run(self.unsubscribe(name))

    async def _current(self, backend: EventBusStore) -> SubscriptionSet:
        if not self._synced and self.declared:
            await self.sync()
        subs = self._subscriptions
        if subs is None:
            subs = self._subscriptions = await backend.bus_subscriptions()
        return subs

    # -- publishing ---------------------------------------------------------------------------
    async def publish(
        self,
        event: Event[Any] | str | object,
        data: Any = _MISSING,
        *,
        key: str | None = None,
        priority: int | str | None = None,
        headers: Mapping[str, Any] | None = None,
        id: str | None = None,
        time: datetime | None = None,
        connection: Any = None,
    ) -> Published:
        """Publish one event: an :class:`Event`, a name and its ``data``, or an instance of a
        declared event type. ``connection``: publish inside that open database transaction
        (SQLite, PostgreSQL): the event and its deliveries exist once it commits."""
        draft = self._draft(event, data, key, priority, headers, id, time)
        (result,) = await self._publish([draft], connection)
        return result

    def publish_sync(
        self,
        event: Event[Any] | str | object,
        data: Any = _MISSING,
        *,
        key: str | None = None,
        priority: int | str | None = None,
        headers: Mapping[str, Any] | None = None,
        id: str | None = None,
        time: datetime | None = None,
        connection: Any = None,
    ) -> Published:
        """Blocking :meth:`publish` (with ``connection``: a synchronous driver connection)."""
        draft = self._draft(event, data, key, priority, headers, id, time)
        if connection is not None:
            return self._publish_on_sync([draft], connection)[0]
        (result,) = self.host.portal.run(self._publish([draft], None))
        return result

    async def publish_many(
        self, events: Sequence[Event[Any] | object], *, connection: Any = None
    ) -> list[Published]:
        """Publish several events in one atomic step (one round trip), in order."""
        drafts = [self._draft(e, _MISSING, None, None, None, None, None) for e in events]
        if not drafts:
            return []
        return await self._publish(drafts, connection)

    def publish_many_sync(
        self, events: Sequence[Event[Any] | object], *, connection: Any = None
    ) -> list[Published]:
        """Blocking :meth:`publish_many`."""
        drafts = [self._draft(e, _MISSING, None, None, None, None, None) for e in events]
        if not drafts:
            return []
        if connection is not None:
            return self._publish_on_sync(drafts, connection)
        return self.host.portal.run(self._publish(drafts, None))

    def _draft(
        self,
        event: Event[Any] | str | object,
        data: Any,
        key: str | None,
        priority: int | str | None,
        headers: Mapping[str, Any] | None,
        event_id: str | None,
        time: datetime | None,
    ) -> _Draft:
        version: int | None = None
        if isinstance(event, Event):
            if data is not _MISSING:
                raise InvalidArgumentsError("pass data inside the Event, not next to it")
            name, data = event.name, event.data
            key = event.key if key is None else key
            priority = event.priority if priority is None else priority
            headers = event.headers if headers is None else headers
            event_id = event.id if event_id is None else event_id
            time = event.time if time is None else time
            version = event.schema_version
        elif isinstance(event, str):
            name = event
            data = None if data is _MISSING else data
        else:
            declared = self.types.by_class.get(type(event))
            if declared is None:
                raise InvalidEventError(
                    f"cannot publish a {type(event).__name__}: publish an Event, a name and "
                    "its data, or an instance of a class declared with @app.bus.event(name)"
                )
            if data is not _MISSING:
                raise InvalidArgumentsError("an event instance carries its own data")
            name, data = declared.name, event
        try:
            check_event_name(name)
        except PatternError as exc:
            raise InvalidEventError(str(exc)) from None
        payload = self.types.to_payload(name, data)
        payload_bytes = self.host.serializer.dumps(payload)
        if key is not None and (not isinstance(key, str) or not key):
            raise InvalidEventError("an event key must be a non-empty string (or None)")
        try:
            prio = parse_priority(0 if priority is None else priority)
        except ValueError as exc:
            raise InvalidEventError(str(exc)) from None
        head = check_metadata(dict(headers)) if headers else {}
        event_id = event_id or new_job_id()
        if not isinstance(event_id, str) or not event_id:
            raise InvalidEventError("an event id must be a non-empty string")
        if time is not None and (not isinstance(time, datetime) or time.tzinfo is None):
            raise InvalidEventError("an event's time must be an aware datetime")
        at = self.host.now() if time is None else time.timestamp()
        declared_type = self.types.by_name.get(name)
        schema = version or (declared_type.version if declared_type is not None else 1)
        env = envelope(event_id, name, payload, key, prio, head, schema, at)
        new = NewEvent(event_id, name, payload_bytes, key, prio, head, schema, at)
        trace = head.get("trace_id")
        return _Draft(new, payload, encode(self.host.serializer, env, payload_bytes), trace)

    def _deliveries(self, drafts: Sequence[_Draft], subs: SubscriptionSet) -> list[NewDelivery]:
        out: list[NewDelivery] = []
        priority_enabled = self.config.queue.priority_enabled
        active = [Subscription.from_record(r) for r in subs.subscriptions]
        for d in drafts:
            ev = d.new
            for sub in active:
                if not sub.matches(ev.name, d.payload):
                    continue
                job = delivery_job(
                    sub, ev.id, d.envelope, ev.priority, priority_enabled, d.trace_id
                )
                chain = ev.key if sub.ordered and ev.key is not None else None
                out.append(NewDelivery(ev.id, sub.name, job, chain))
        return out

    async def _publish(self, drafts: list[_Draft], connection: Any) -> list[Published]:
        backend = await self.store()
        subs = await self._current(backend)
        events = [d.new for d in drafts]
        now = self.host.backend_now()
        if connection is not None:
            if not isinstance(backend, EventBusTransactions):
                raise ConfigurationError(
                    "publish with connection= needs a SQL backend (SQLite or PostgreSQL); "
                    f"{self.host.factory.describe()['url']} has no transactions to join"
                )
            result = await backend.bus_publish_on(
                connection, events, self._deliveries(drafts, subs), subs.version, now
            )
            if result is None:  # refreshed under the transaction's lock: cannot move again
                subs = self._subscriptions = await backend.bus_subscriptions_on(connection)
                result = await backend.bus_publish_on(
                    connection, events, self._deliveries(drafts, subs), subs.version, now
                )
            return self._results(drafts, result)
        for _ in range(_STALE_ROUNDS):
            result = await backend.bus_publish(
                events, self._deliveries(drafts, subs), subs.version, now
            )
            if result is not None:
                return self._results(drafts, result)
            subs = self._subscriptions = await backend.bus_subscriptions()
            await asyncio.sleep(0)
        raise BackendError("the subscriptions kept changing while publishing; try again")

    def _publish_on_sync(self, drafts: list[_Draft], connection: Any) -> list[Published]:
        factory = self.host.factory
        if not isinstance(factory, SyncEventBusTransactions):
            raise ConfigurationError(
                "publish with connection= needs a SQL backend (SQLite or PostgreSQL); "
                f"{factory.describe()['url']} has no transactions to join"
            )
        if not self._synced and self.declared:
            self.sync_sync()
        events = [d.new for d in drafts]
        now = self.host.backend_now()
        subs = self._subscriptions or factory.bus_subscriptions_on_sync(connection)
        result = factory.bus_publish_on_sync(
            connection, events, self._deliveries(drafts, subs), subs.version, now
        )
        if result is None:
            subs = self._subscriptions = factory.bus_subscriptions_on_sync(connection)
            result = factory.bus_publish_on_sync(
                connection, events, self._deliveries(drafts, subs), subs.version, now
            )
        return self._results(drafts, result)

    @staticmethod
    def _results(drafts: Sequence[_Draft], result: list[PublishResult] | None) -> list[Published]:
        if result is None:
            raise BackendError("the subscriptions changed inside the transaction; try again")
        return [
            Published(r.id, d.new.name, r.position, r.created)
            for d, r in zip(drafts, result, strict=True)
        ]
