"""Subscriptions: declared in code, stored in the store, matched at publish.

A declaration (``@app.bus.subscribe("order.*", name="billing")``) registers the handler as a
task (``bus:<name>``, on the bus queue) and a *spec*, the settings every producer needs to
build the subscription's delivery jobs without the handler's code: the task, queue, filters,
ordering, attempts, timeout, priority. The spec is stored with the subscription
(:meth:`EventBusStore.bus_subscribe`), so a process that only publishes (a web app) fans out to
subscriptions whose handlers live in another codebase.

Filters: ``where={"region": "eu", "total_band": ["high", "max"]}`` keeps the events whose
payload has, at each dotted path, that value (or one of those values).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from conveyor.bus.event import StoredEvent
from conveyor.bus.types import EventTypes, field_exists
from conveyor.domain.events import (
    PatternError,
    SubscriptionRecord,
    check_pattern,
    filters_match,
    pattern_matches,
)
from conveyor.domain.ids import new_job_id
from conveyor.domain.job import NewJob
from conveyor.errors import ConfigurationError

TASK_PREFIX = "bus:"

Handler = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class Subscription:
    """A subscription as stored: its ``name``, ``pattern``, where its log starts
    (``position``: it gets the events stored after it) and its settings."""

    name: str
    pattern: str
    position: int
    task: str
    queue: str
    filters: dict[str, list[Any]]
    ordered: bool
    attempts: int
    timeout: float | None
    priority: int | None
    handler: str | None
    declared_here: bool = False

    @classmethod
    def from_record(cls, record: SubscriptionRecord, declared: bool = False) -> Subscription:
        spec = record.spec
        return cls(
            name=record.name,
            pattern=record.pattern,
            position=record.position,
            task=str(spec.get("task", TASK_PREFIX + record.name)),
            queue=str(spec.get("queue", "events")),
            filters={str(k): list(v) for k, v in (spec.get("filters") or {}).items()},
            ordered=bool(spec.get("ordered", True)),
            attempts=int(spec.get("attempts", 1)),
            timeout=spec.get("timeout"),
            priority=spec.get("priority"),
            handler=spec.get("handler"),
            declared_here=declared,
        )

    def matches(self, name: str, payload: Any) -> bool:
        """Whether an event named ``name`` with ``payload`` is for this subscription."""
        if not pattern_matches(self.pattern, name):
            return False
        return not self.filters or filters_match(self.filters, payload)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pattern": self.pattern,
            "position": self.position,
            "task": self.task,
            "queue": self.queue,
            "filters": self.filters,
            "ordered": self.ordered,
            "attempts": self.attempts,
            "timeout": self.timeout,
            "priority": self.priority,
            "handler": self.handler,
        }


@dataclass(frozen=True, slots=True)
class Declared:
    """A subscription declared in this process: its handler and its stored spec."""

    name: str
    pattern: str
    handler: Handler
    spec: dict[str, Any]
    task: str

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.handler)


def normalize_filters(where: Mapping[str, Any] | None) -> dict[str, list[Any]]:
    """``where`` as ``{dotted path: [accepted values]}``; raises on a malformed one."""
    if where is None:
        return {}
    if not isinstance(where, Mapping):
        raise ConfigurationError("where= must be a dict of {field path: value or [values]}")
    out: dict[str, list[Any]] = {}
    for path, value in where.items():
        if not isinstance(path, str) or not path or any(not p for p in path.split(".")):
            raise ConfigurationError(f"where= has a bad field path {path!r}; write 'a' or 'a.b'")
        values = list(value) if isinstance(value, list | tuple | set | frozenset) else [value]
        for v in values:
            if not (v is None or isinstance(v, bool | int | float | str)):
                raise ConfigurationError(
                    f"where={{{path!r}: ...}}: filter values are None, bool, numbers or "
                    f"strings, not {type(v).__name__}"
                )
        out[path] = values
    return out


def check_declaration(
    pattern: str, filters: Mapping[str, Sequence[Any]], types: EventTypes
) -> None:
    """Refuse an unknown pattern syntax, and a filter on a field that none of the event types
    the pattern matches has (when it matches declared types)."""
    try:
        check_pattern(pattern)
    except PatternError as exc:
        raise ConfigurationError(str(exc)) from None
    declared = types.matching(pattern)
    if not declared:
        return
    for path in filters:
        if not any(field_exists(t.cls, path) for t in declared):
            names = ", ".join(f"{t.name} ({t.cls.__name__})" for t in declared)
            raise ConfigurationError(
                f"subscription on {pattern!r} filters on {path!r}, a field none of its event "
                f"types has: {names}"
            )


def delivery_job(
    sub: Subscription,
    event_id: str,
    payload: bytes,
    priority: int,
    priority_enabled: bool,
    trace_id: str | None,
) -> NewJob:
    """The job that delivers one event (its envelope is ``payload``) to ``sub``."""
    if sub.priority is not None:
        priority = sub.priority
    elif not priority_enabled:
        priority = 0
    return NewJob(
        id=new_job_id(),
        task=sub.task,
        queue=sub.queue,
        payload=payload,
        priority=priority,
        max_attempts=max(sub.attempts, 1),
        timeout=sub.timeout,
        trace_id=trace_id,
    )


def matching(subs: Sequence[Subscription], event: StoredEvent) -> list[Subscription]:
    """The subscriptions a stored event matches (for replay)."""
    return [s for s in subs if s.matches(event.name, event.data)]
