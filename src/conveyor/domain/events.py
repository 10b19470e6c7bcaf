"""The event bus's values and rules: event names, subscription patterns, payload filters, and
the records that cross the backend seam (:mod:`conveyor.backends.capabilities.events`).

Pure: no I/O. Payloads are opaque bytes here, as job payloads are; the bus in
:mod:`conveyor.bus` serializes them.

**Names and patterns.** An event name is dot-separated segments of letters, digits, ``_`` and
``-`` (``order.created``, ``billing.invoice-paid``). A subscription pattern uses the AMQP
topic convention: ``*`` stands for exactly one segment and ``#`` for zero or more, so
``order.*`` matches ``order.created`` but not ``order.line.added``, and ``order.#`` matches
``order``, ``order.created`` and ``order.line.added``. A wildcard is a whole segment:
``order.cr*`` is refused.

**Positions.** Every stored event gets a *position* in the bus's log: an integer that grows in
commit order (an event committed later always has a larger position, whatever the order the
publishers started in), never reused, possibly with gaps. A reader that remembers the last
position it saw never skips an event: that is the cursor the realtime and webhook features
resume from.

**Deliveries.** Publishing stores the event and, in the same atomic step, one *delivery* per
matching subscription: a row naming the event, the subscription and the job that runs the
handler. A delivery is ``live`` until its handler succeeded (``handled``) or failed for good
(``dead``); :func:`delivery_state` turns that and the job's state into the five states shown to
users.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import Any

from conveyor.domain.job import NewJob
from conveyor.domain.states import JobState

_SEGMENT = re.compile(r"[A-Za-z0-9_\-]+")
_MAX_NAME = 255


class PatternError(ValueError):
    """An event name or subscription pattern that breaks the syntax rules."""


_VALID_NAMES: set[str] = set()


def check_event_name(name: object) -> str:
    """``name`` if it is a valid event name, else :class:`PatternError` saying why."""
    if isinstance(name, str) and name in _VALID_NAMES:
        return name
    if not isinstance(name, str) or not name:
        raise PatternError("an event name must be a non-empty string such as 'order.created'")
    if len(name) > _MAX_NAME:
        raise PatternError(f"event name {name[:40]!r}... is longer than {_MAX_NAME} characters")
    for segment in name.split("."):
        if not _SEGMENT.fullmatch(segment):
            raise PatternError(
                f"bad event name {name!r}: write dot-separated segments of letters, digits, "
                "'_' and '-' (e.g. 'order.created'); wildcards belong in subscription patterns"
            )
    if len(_VALID_NAMES) < 10_000:
        _VALID_NAMES.add(name)
    return name


def check_pattern(pattern: object) -> str:
    """``pattern`` if it is a valid subscription pattern, else :class:`PatternError`."""
    if not isinstance(pattern, str) or not pattern:
        raise PatternError("a subscription pattern must be a non-empty string such as 'order.*'")
    if len(pattern) > _MAX_NAME:
        raise PatternError(f"pattern {pattern[:40]!r}... is longer than {_MAX_NAME} characters")
    for segment in pattern.split("."):
        if segment in ("*", "#"):
            continue
        if not _SEGMENT.fullmatch(segment):
            raise PatternError(
                f"unknown pattern syntax {pattern!r}: segments are literal names, '*' (exactly "
                "one segment) or '#' (zero or more segments), separated by dots — e.g. "
                "'order.*' or 'order.#'"
            )
    return pattern


@lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern[str]:
    parts: list[str] = []
    for segment in pattern.split("."):
        if segment == "*":
            parts.append(r"\.[^.]+")
        elif segment == "#":
            parts.append(r"(?:\.[^.]+)*")
        else:
            parts.append(r"\." + re.escape(segment))
    # Every part starts with a dot; the name gets one in front to match against.
    return re.compile("".join(parts))


def pattern_matches(pattern: str, name: str) -> bool:
    """Whether the event ``name`` matches the subscription ``pattern``."""
    if pattern == name:
        return True
    return _compiled(pattern).fullmatch("." + name) is not None


def is_literal(pattern: str) -> bool:
    """Whether ``pattern`` has no wildcard (it names exactly one event)."""
    return "*" not in pattern and "#" not in pattern


# -- payload filters ---------------------------------------------------------------------------
def field_value(payload: Any, path: str) -> tuple[bool, Any]:
    """``(True, value)`` at the dotted ``path`` inside a decoded payload, or ``(False, None)``
    when a step is missing."""
    value = payload
    for step in path.split("."):
        if not isinstance(value, Mapping) or step not in value:
            return False, None
        value = value[step]
    return True, value


def filters_match(filters: Mapping[str, Sequence[Any]], payload: Any) -> bool:
    """Whether ``payload`` passes every filter: the value at each dotted path must equal one of
    the accepted values (a missing field never matches)."""
    for path, accepted in filters.items():
        found, value = field_value(payload, path)
        if not found or not any(_same(value, a) for a in accepted):
            return False
    return True


def _same(value: Any, accepted: Any) -> bool:
    # True == 1 in Python; a filter on a boolean must not accept 1, nor one on 1 accept True.
    if isinstance(value, bool) or isinstance(accepted, bool):
        return isinstance(value, bool) and isinstance(accepted, bool) and value is accepted
    return bool(value == accepted)


# -- records crossing the backend seam ----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event as the core hands it to the store. ``occurred_at`` ``None``: the store's clock
    at publish. ``headers`` is JSON (str keys)."""

    id: str
    name: str
    payload: bytes
    key: str | None = None
    priority: int = 0
    headers: dict[str, Any] = field(default_factory=dict)
    schema_version: int = 1
    occurred_at: float | None = None


@dataclass(frozen=True, slots=True)
class EventRecord:
    """A stored event. ``position`` is its place in the log (commit order);
    ``stored_at`` the store's time when it was published."""

    position: int
    id: str
    name: str
    payload: bytes
    key: str | None
    priority: int
    headers: dict[str, Any]
    schema_version: int
    occurred_at: float
    stored_at: float


@dataclass(frozen=True, slots=True)
class PublishResult:
    """One event's outcome: its position, and ``created`` ``False`` when an event with its id
    was stored before (publishing is idempotent on the event id)."""

    id: str
    position: int
    created: bool


@dataclass(frozen=True, slots=True)
class SubscriptionRecord:
    """A stored subscription. It receives the events stored after ``position`` (the log's
    head when it was created). ``spec`` is the core's settings for it (JSON): the task that
    runs its handler, the queue, filters, ordering, attempts, ..."""

    name: str
    pattern: str
    spec: dict[str, Any]
    position: int
    created_at: float


@dataclass(frozen=True, slots=True)
class SubscriptionSet:
    """Every subscription and the version of the set (it grows with every change)."""

    version: int
    subscriptions: tuple[SubscriptionRecord, ...]


@dataclass(frozen=True, slots=True)
class NewDelivery:
    """One (event, subscription) pair to deliver, with the job that will run the handler.

    ``chain`` set: deliveries of one subscription with the same chain run one at a time, in
    the order they were stored (per-key ordering); the job of any but the first is stored
    ``blocked`` and released when the one before it is handled or dead. ``None``: unordered.
    """

    event_id: str
    subscription: str
    job: NewJob
    chain: str | None = None


class DeliveryStatus(StrEnum):
    """What the store records about a delivery (see :func:`delivery_state`)."""

    LIVE = "live"  # its job has not finished (or finished without telling)
    HANDLED = "handled"  # the handler succeeded
    DEAD = "dead"  # the handler failed for good, or its job ended without running it


class DeliveryState(StrEnum):
    """The state of a delivery as users see it (seed 003's handler execution tracking)."""

    PENDING = "pending"  # waiting to run (blocked behind an earlier one of its key included)
    RUNNING = "running"
    FAILED = "failed"  # an attempt failed; another one follows
    SUCCEEDED = "succeeded"
    DEAD = "dead"  # in the dead-letter set, or given up


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """A stored delivery with the facts of its job (``job_state`` ``None``: the job is gone,
    pruned by retention or purged)."""

    event_id: str
    position: int
    subscription: str
    job_id: str
    status: DeliveryStatus
    chain: str | None
    created_at: float
    finished_at: float | None
    job_state: JobState | None
    attempts: int
    error_code: str | None = None
    error_message: str | None = None

    @property
    def state(self) -> DeliveryState:
        return delivery_state(self.status, self.job_state, self.attempts)


def delivery_state(status: DeliveryStatus, job: JobState | None, attempts: int) -> DeliveryState:
    """The user-facing state of a delivery from its stored status and its job's state.

    The job's state wins while the job is alive (a dead delivery retried from the dead-letter
    set is pending or running again); a finished or missing job defers to the status.
    """
    if job is JobState.RUNNING:
        return DeliveryState.RUNNING
    if job in (JobState.QUEUED, JobState.SCHEDULED, JobState.BLOCKED):
        if status is DeliveryStatus.HANDLED:
            return DeliveryState.SUCCEEDED
        return DeliveryState.FAILED if attempts > 0 else DeliveryState.PENDING
    if status is DeliveryStatus.HANDLED or job is JobState.COMPLETED:
        return DeliveryState.SUCCEEDED
    return DeliveryState.DEAD


@dataclass(frozen=True, slots=True)
class DeliveryFilter:
    """Selects deliveries; ``None`` matches anything. ``dead_letters``: only deliveries whose
    job sits in the dead-letter set (state ``failed``)."""

    event_id: str | None = None
    subscription: str | None = None
    statuses: tuple[DeliveryStatus, ...] | None = None
    dead_letters: bool = False


@dataclass(frozen=True, slots=True)
class EventQuery:
    """Selects events of the log, read in position order: after position ``after``, up to
    ``before`` (exclusive), ``occurred_at`` in [``since``, ``until``), with ``key``."""

    after: int = 0
    before: int | None = None
    since: float | None = None
    until: float | None = None
    key: str | None = None

    def matches(self, record: EventRecord) -> bool:
        if record.position <= self.after:
            return False
        if self.before is not None and record.position >= self.before:
            return False
        if self.since is not None and record.occurred_at < self.since:
            return False
        if self.until is not None and record.occurred_at >= self.until:
            return False
        return self.key is None or record.key == self.key


# -- event-sourced streams -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class NewStreamEvent:
    """An event to append to a stream (its id is unique across all streams)."""

    id: str
    name: str
    payload: bytes
    headers: dict[str, Any] = field(default_factory=dict)
    schema_version: int = 1


@dataclass(frozen=True, slots=True)
class StreamRecord:
    """A stored event of a stream; ``version`` counts the stream's events from 1."""

    stream: str
    version: int
    id: str
    name: str
    payload: bytes
    headers: dict[str, Any]
    schema_version: int
    recorded_at: float


@dataclass(frozen=True, slots=True)
class AppendResult:
    """``appended``: the events were stored (or had been, by an earlier call with the same
    first event id); ``version``: the stream's version after the append, or its current
    version when the expected version did not match."""

    appended: bool
    version: int


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    """A stream's state as of ``version`` (opaque bytes), a cache of folding its events."""

    stream: str
    version: int
    state: bytes
    schema_version: int
    taken_at: float
