"""The event as users publish and receive it, and what the log shows of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from conveyor.domain.events import DeliveryRecord, DeliveryState, DeliveryStatus

T = TypeVar("T")


def to_datetime(seconds: float) -> datetime:
    """Epoch seconds as an aware UTC datetime."""
    return datetime.fromtimestamp(seconds, UTC)


@dataclass(frozen=True, slots=True)
class Event(Generic[T]):
    """One event: ``Event("order.created", {"order_id": 42}, key="order-42")``.

    Publish it with ``app.bus.publish(...)``; handlers receive one with ``data`` decoded (an
    instance of the event type declared for its name, else the JSON value). ``key`` orders and
    partitions: a subscription handles the events of one key in publish order. ``priority``
    is an integer or one of ``critical``, ``high``, ``normal``, ``low``, ``background`` (the
    priority of its delivery jobs). ``headers`` is JSON metadata (tenant, trace, ...).
    ``id`` and ``time`` are set at publish when not given; ``schema_version`` is the declared
    type's version (or 1).

    Set only on received or stored events: ``position`` (the place in the log, when known),
    ``subscription`` (whose handler runs), ``attempt`` (1 for the first run).
    """

    name: str
    data: T = None  # type: ignore[assignment]
    key: str | None = None
    priority: int | str = 0
    headers: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    time: datetime | None = None
    schema_version: int | None = None
    position: int | None = None
    subscription: str | None = None
    attempt: int = 0


@dataclass(frozen=True, slots=True)
class Published:
    """What :meth:`EventBus.publish` stored: the event's id and position, and ``created``
    ``False`` when an event with that id had been published before (nothing was stored
    again)."""

    id: str
    name: str
    position: int
    created: bool


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event of the log. ``data`` is the decoded payload (``None`` with ``decode_error``
    set when it cannot be decoded)."""

    position: int
    id: str
    name: str
    data: Any
    key: str | None
    priority: int
    headers: dict[str, Any]
    schema_version: int
    time: datetime
    stored_at: datetime
    decode_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "id": self.id,
            "name": self.name,
            "data": self.data,
            "key": self.key,
            "priority": self.priority,
            "headers": self.headers,
            "schema_version": self.schema_version,
            "time": self.time.isoformat(),
            "stored_at": self.stored_at.isoformat(),
            "decode_error": self.decode_error,
        }


@dataclass(frozen=True, slots=True)
class Delivery:
    """One (event, subscription) delivery and its handler's execution: ``state`` (pending,
    running, failed = an attempt failed and another follows, succeeded, dead), attempts and the
    last error of its job."""

    event_id: str
    position: int
    subscription: str
    job_id: str
    state: DeliveryState
    attempts: int
    error_code: str | None
    error_message: str | None
    created_at: datetime
    finished_at: datetime | None
    in_dead_letters: bool

    @classmethod
    def from_record(cls, r: DeliveryRecord) -> Delivery:
        from conveyor.domain.states import JobState

        return cls(
            event_id=r.event_id,
            position=r.position,
            subscription=r.subscription,
            job_id=r.job_id,
            state=r.state,
            attempts=r.attempts,
            error_code=r.error_code,
            error_message=r.error_message,
            created_at=to_datetime(r.created_at),
            finished_at=None if r.finished_at is None else to_datetime(r.finished_at),
            in_dead_letters=r.job_state is JobState.FAILED,
        )

    @property
    def handled(self) -> bool:
        return self.state is DeliveryState.SUCCEEDED

    def to_dict(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "position": self.position,
            "subscription": self.subscription,
            "job_id": self.job_id,
            "state": self.state.value,
            "attempts": self.attempts,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "created_at": self.created_at.isoformat(),
            "finished_at": None if self.finished_at is None else self.finished_at.isoformat(),
            "in_dead_letters": self.in_dead_letters,
        }


__all__ = [
    "Delivery",
    "DeliveryState",
    "DeliveryStatus",
    "Event",
    "Published",
    "StoredEvent",
    "to_datetime",
]
