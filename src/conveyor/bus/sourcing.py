"""Event sourcing (``app.bus.streams``): streams of events per aggregate, appended with an
expected version, read from a version, with snapshots every N events.

::

    class Account(Aggregate):
        def __init__(self, id: str) -> None:
            super().__init__(id)
            self.balance = 0

        def apply(self, event: Event[Any]) -> None:
            if event.name == "account.deposited":
                self.balance += event.data["amount"]

    account = await app.bus.streams.load(Account, "42")      # snapshot + later events
    account.record("account.deposited", {"amount": 10})
    await app.bus.streams.save(account)                       # VersionConflictError if raced

An append states the version the writer loaded (``expected_version``); when another writer
appended first, it fails with :class:`~conveyor.errors.VersionConflictError` and nothing is
stored: load again and retry the command. Every ``snapshot_interval`` events (seed 003: 100)
``save`` stores a snapshot of the aggregate's state; ``load`` starts from the latest snapshot
and applies only the events after it. Snapshots are a cache: retention prunes the events a
snapshot covers once they are older than ``eventSourcing.retention`` days, never later ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, TypeVar

from conveyor.backends.capabilities import require
from conveyor.backends.capabilities.streams import EventStreams
from conveyor.bus.config import EventSourcingConfig
from conveyor.bus.envelope import EventDecodeError, decode, envelope
from conveyor.bus.event import Event, to_datetime
from conveyor.bus.ports import BusCore
from conveyor.core.serialization import check_metadata
from conveyor.domain.events import NewStreamEvent, PatternError, StreamRecord, check_event_name
from conveyor.domain.ids import new_job_id
from conveyor.errors import ConveyorError, InvalidEventError, VersionConflictError

A = TypeVar("A", bound="Aggregate")

_PAGE = 1000


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A stream's state as of ``version``, decoded."""

    stream: str
    version: int
    state: Any
    schema_version: int
    time: datetime


class Aggregate:
    """Base class of event-sourced aggregates.

    Subclasses implement :meth:`apply` (change the state for one event, no I/O) and may set
    ``stream_prefix`` (default: the class name in lower case, so ``Account("42")`` lives in
    stream ``account-42``). :meth:`snapshot` and :meth:`restore` default to the instance's
    public attributes as JSON; override them (and bump ``snapshot_version``) when the state
    needs another shape. A snapshot of another ``snapshot_version`` is ignored on load.
    """

    stream_prefix: ClassVar[str | None] = None
    snapshot_version: ClassVar[int] = 1

    def __init__(self, id: str) -> None:
        self.id = id
        self.version = 0
        self._pending: list[Event[Any]] = []

    @property
    def stream(self) -> str:
        prefix = self.stream_prefix or type(self).__name__.lower()
        return f"{prefix}-{self.id}"

    @property
    def pending(self) -> list[Event[Any]]:
        """Events recorded since the last load or save."""
        return list(self._pending)

    def apply(self, event: Event[Any]) -> None:
        """Change the state for ``event`` (its ``position`` is its version in the stream)."""
        raise NotImplementedError(f"{type(self).__name__}.apply(event) is not implemented")

    def record(self, event: Event[Any] | str, data: Any = None) -> None:
        """Record a new event: apply it now, append it at the next :meth:`EventStore.save`.
        ``event`` is an :class:`Event` or a name with its ``data`` (a dict, or an instance of
        the type declared for the name)."""
        if isinstance(event, str):
            event = Event(event, data)
        self.apply(event)
        self._pending.append(event)

    def snapshot(self) -> Any:
        """The state to store in a snapshot (JSON by default: the public attributes)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and k != "id"}

    def restore(self, state: Any) -> None:
        """Set the state from :meth:`snapshot`'s value."""
        for key, value in dict(state).items():
            setattr(self, key, value)


class EventStore:
    """Event-sourced streams of one bus (``app.bus.streams``)."""

    def __init__(self, bus: BusCore) -> None:
        self.bus = bus
        self.config = EventSourcingConfig()

    def configure(self, config: EventSourcingConfig) -> None:
        self.config = config

    async def _store(self) -> EventStreams:
        backend = await self.bus.host.backend()
        require(backend, EventStreams, "event sourcing")
        assert isinstance(backend, EventStreams)
        return backend

    # -- streams ------------------------------------------------------------------------------
    async def append(
        self,
        stream: str,
        events: Sequence[Event[Any] | object],
        *,
        expected_version: int | None,
        publish: bool = False,
    ) -> int:
        """Append ``events`` to ``stream`` if it is at ``expected_version`` (0: a new stream;
        ``None``: whatever it is); the stream's new version. Raises
        :class:`VersionConflictError` (nothing stored) when another writer got there first.
        ``publish``: also publish them on the bus (same ids, key = the stream) once stored."""
        if not isinstance(stream, str) or not stream:
            raise InvalidEventError("a stream name must be a non-empty string")
        items = [self._new(e) for e in events]
        backend = await self._store()
        result = await backend.stream_append(
            stream, [n for n, _ in items], expected_version, self.bus.host.backend_now()
        )
        if not result.appended:
            raise VersionConflictError(stream, expected_version or 0, result.version)
        if publish and items:
            await self._publish(stream, items)
        return result.version

    def append_sync(
        self,
        stream: str,
        events: Sequence[Event[Any] | object],
        *,
        expected_version: int | None,
        publish: bool = False,
    ) -> int:
        """Blocking :meth:`append`."""
        return self.bus.host.portal.run(
            self.append(stream, events, expected_version=expected_version, publish=publish)
        )

    def _new(self, event: Event[Any] | object) -> tuple[NewStreamEvent, Event[Any]]:
        types = self.bus.types
        if not isinstance(event, Event):
            declared = types.by_class.get(type(event))
            if declared is None:
                raise InvalidEventError(
                    f"cannot append a {type(event).__name__}: use an Event, or an instance of "
                    "a class declared with @app.bus.event(name)"
                )
            event = Event(declared.name, event)
        try:
            check_event_name(event.name)
        except PatternError as exc:
            raise InvalidEventError(str(exc)) from None
        payload = types.to_payload(event.name, event.data)
        declared_type = types.by_name.get(event.name)
        version = event.schema_version or (declared_type.version if declared_type else 1)
        headers = check_metadata(dict(event.headers))
        event_id = event.id or new_job_id()
        data = self.bus.host.serializer.dumps(payload)
        new = NewStreamEvent(event_id, event.name, data, headers, version)
        return new, Event(event.name, payload, headers=headers, id=event_id, schema_version=version)

    async def _publish(
        self, stream: str, items: Sequence[tuple[NewStreamEvent, Event[Any]]]
    ) -> None:
        await self.bus.publish_many(
            [
                Event(
                    e.name,
                    e.data,
                    key=stream,
                    headers=e.headers,
                    id=e.id,
                    schema_version=e.schema_version,
                )
                for _, e in items
            ]
        )

    async def read(self, stream: str, after_version: int = 0) -> list[Event[Any]]:
        """The stream's events after ``after_version``, decoded (``position`` = version)."""
        backend = await self._store()
        out: list[Event[Any]] = []
        cursor = after_version
        while True:
            page = await backend.stream_read(stream, cursor, _PAGE)
            out += [self._event(r) for r in page]
            if len(page) < _PAGE:
                return out
            cursor = page[-1].version

    def read_sync(self, stream: str, after_version: int = 0) -> list[Event[Any]]:
        """Blocking :meth:`read`."""
        return self.bus.host.portal.run(self.read(stream, after_version))

    def _event(self, r: StreamRecord) -> Event[Any]:
        host = self.bus.host
        try:
            data = host.serializer.loads(r.payload)
        except Exception as exc:  # noqa: BLE001 - any decoder error
            raise EventDecodeError(
                f"stream {r.stream!r} version {r.version} cannot be decoded: {exc}"
            ) from None
        env = envelope(r.id, r.name, data, r.stream, 0, r.headers, r.schema_version, r.recorded_at)
        return decode(env, self.bus.types, "", 0, position=r.version)

    async def version(self, stream: str) -> int:
        """The stream's version (0 when it has no events)."""
        return await (await self._store()).stream_version(stream)

    def version_sync(self, stream: str) -> int:
        """Blocking :meth:`version`."""
        return self.bus.host.portal.run(self.version(stream))

    # -- snapshots ----------------------------------------------------------------------------
    async def save_snapshot(
        self, stream: str, version: int, state: Any, *, schema_version: int = 1
    ) -> None:
        """Store ``state`` (serialized by the app's serializer) as of ``version``."""
        data = self.bus.host.serializer.dumps(state)
        backend = await self._store()
        await backend.snapshot_save(
            stream, version, data, schema_version, self.bus.host.backend_now()
        )

    def save_snapshot_sync(
        self, stream: str, version: int, state: Any, *, schema_version: int = 1
    ) -> None:
        """Blocking :meth:`save_snapshot`."""
        self.bus.host.portal.run(
            self.save_snapshot(stream, version, state, schema_version=schema_version)
        )

    async def load_snapshot(self, stream: str) -> Snapshot | None:
        """The stream's latest snapshot, decoded, or ``None``."""
        record = await (await self._store()).snapshot_load(stream)
        if record is None:
            return None
        state = self.bus.host.serializer.loads(record.state)
        return Snapshot(
            stream, record.version, state, record.schema_version, to_datetime(record.taken_at)
        )

    def load_snapshot_sync(self, stream: str) -> Snapshot | None:
        """Blocking :meth:`load_snapshot`."""
        return self.bus.host.portal.run(self.load_snapshot(stream))

    # -- aggregates ---------------------------------------------------------------------------
    async def load(self, cls: type[A], id: str) -> A:
        """The aggregate ``cls(id)`` as of now: its latest snapshot (if one of its
        ``snapshot_version``), then the events after it."""
        aggregate = cls(id)
        snap = await self.load_snapshot(aggregate.stream)
        if snap is not None and snap.schema_version == cls.snapshot_version:
            aggregate.restore(snap.state)
            aggregate.version = snap.version
        events = await self.read(aggregate.stream, aggregate.version)
        if not events and await self.version(aggregate.stream) > aggregate.version:
            raise self._gap(aggregate)
        for event in events:
            if event.position != aggregate.version + 1:
                raise self._gap(aggregate)
            aggregate.apply(event)
            aggregate.version = event.position or aggregate.version
        aggregate._pending.clear()
        return aggregate

    @staticmethod
    def _gap(aggregate: Aggregate) -> ConveyorError:
        return ConveyorError(
            f"stream {aggregate.stream!r} has no event {aggregate.version + 1} (pruned behind a "
            f"snapshot that {type(aggregate).__name__} cannot use: snapshot_version "
            f"{type(aggregate).snapshot_version}); restore the snapshot format or the events"
        )

    def load_sync(self, cls: type[A], id: str) -> A:
        """Blocking :meth:`load`."""
        return self.bus.host.portal.run(self.load(cls, id))

    async def save(self, aggregate: Aggregate, *, publish: bool = False) -> int:
        """Append the aggregate's pending events at the version it was loaded at (raises
        :class:`VersionConflictError` if another writer appended since), and take a snapshot
        when the stream crossed a multiple of ``snapshot_interval``; the new version."""
        pending = aggregate._pending
        if not pending:
            return aggregate.version
        before = aggregate.version
        version = await self.append(
            aggregate.stream, pending, expected_version=before, publish=publish
        )
        aggregate.version = version
        aggregate._pending = []
        every = self.config.snapshot_interval
        if every > 0 and version // every > before // every:
            await self.save_snapshot(
                aggregate.stream,
                version,
                aggregate.snapshot(),
                schema_version=type(aggregate).snapshot_version,
            )
        return version

    def save_sync(self, aggregate: Aggregate, *, publish: bool = False) -> int:
        """Blocking :meth:`save`."""
        return self.bus.host.portal.run(self.save(aggregate, publish=publish))

    # -- retention ----------------------------------------------------------------------------
    async def prune(self, older_than: float | None = None) -> int:
        """Delete events older than ``older_than`` seconds (default: the configured retention)
        that a snapshot covers; how many were deleted."""
        keep = older_than if older_than is not None else self.config.retention
        if keep is None:
            return 0
        backend = await self._store()
        before = self.bus.host.now() - keep
        total = 0
        while True:
            n = await backend.stream_prune(before, 1000)
            total += n
            if n < 1000:
                return total

    def prune_sync(self, older_than: float | None = None) -> int:
        """Blocking :meth:`prune`."""
        return self.bus.host.portal.run(self.prune(older_than))
