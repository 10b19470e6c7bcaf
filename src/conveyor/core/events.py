"""In-process lifecycle events with typed payloads.

``app.on("failed", handler)`` or ``task.on("completed", handler)`` registers a listener (plain or
async function taking one :class:`JobEvent`) and returns a function that unregisters it. Events
fire in the process where the transition happened: ``enqueued`` in the producer, the rest in the
worker. Listener errors are logged, never propagated into job processing.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

EventKind = Literal[
    "enqueued",
    "started",
    "progress",
    "retrying",
    "completed",
    "failed",
    "cancelled",
    "stalled",
    "dead",
    "worker:ready",
    "worker:closing",
    "worker:error",
]
EVENT_KINDS: tuple[str, ...] = (
    "enqueued",
    "started",
    "progress",
    "retrying",
    "completed",
    "failed",
    "cancelled",
    "stalled",
    "dead",
    # App-level worker events (issue 19): ``job_id``/``task``/``queue`` are empty,
    # ``worker_id`` says which worker; ``worker:error`` carries ``error_message``/``error_type``.
    "worker:ready",
    "worker:closing",
    "worker:error",
)

log = logging.getLogger("conveyor.events")


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One lifecycle event.

    ``failed`` fires for every failed attempt, with ``will_retry`` telling whether another
    attempt follows; ``dead`` fires once when a job lands in the dead-letter set; ``stalled``
    fires when recovery finds a job whose lease expired (``action`` is ``recovered`` or
    ``failed``). ``duration`` is the attempt's run time in seconds.
    """

    kind: str
    job_id: str
    task: str
    queue: str
    attempt: int = 0
    at: float = 0.0
    will_retry: bool = False
    duration: float | None = None
    error_code: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    result: Any = None
    progress: Any = None
    retry_delay: float | None = None
    action: str | None = None
    trace_id: str | None = None
    worker_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


Listener = Callable[[JobEvent], Awaitable[None] | None]


class EventHub:
    """Listeners by event kind, app-wide and per task."""

    def __init__(self) -> None:
        self._app: dict[str, list[Listener]] = {}
        self._task: dict[tuple[str, str], list[Listener]] = {}

    def on(self, kind: str, listener: Listener, *, task: str | None = None) -> Callable[[], None]:
        """Register ``listener`` for ``kind`` (optionally only for one task)."""
        if kind not in EVENT_KINDS and kind != "*":
            raise ValueError(f"unknown event {kind!r}; known events: {', '.join(EVENT_KINDS)}")
        bucket = (
            self._app.setdefault(kind, [])
            if task is None
            else self._task.setdefault((task, kind), [])
        )
        bucket.append(listener)

        def off() -> None:
            if listener in bucket:
                bucket.remove(listener)

        return off

    def has_listeners(self, kind: str, task: str) -> bool:
        """Whether anyone listens for ``kind`` on ``task`` (app-wide listeners count)."""
        return bool(self._app.get(kind) or self._app.get("*") or self._task.get((task, kind)))

    async def emit(self, event: JobEvent) -> None:
        """Call every matching listener; errors are logged and swallowed."""
        listeners = [
            *self._task.get((event.task, event.kind), ()),
            *self._app.get(event.kind, ()),
            *self._app.get("*", ()),
        ]
        for listener in listeners:
            try:
                outcome = listener(event)
                if inspect.isawaitable(outcome):
                    await outcome
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event listener %r failed for %s event", listener, event.kind)
