"""Job lifecycle events on the bus: ``conveyor.job.<kind>`` (``enqueued``, ``started``,
``completed``, ``failed``, ``dead``, ...), so a process that did not run the job (a dashboard,
the webhook and realtime integrations) can subscribe to them or read them from the log.

Turned on with ``app.bus.configure({"lifecycle": ["completed", "dead"]})``. The in-process
listeners (``app.on(...)``) feed it: each event is published where the transition happened,
from the listener, with concurrent ones batched into one publish (one round trip). The event's
key is the job id, so an ordered subscription sees one job's events in order. Delivery jobs of
the bus itself are left out (a subscriber to ``conveyor.job.#`` would otherwise feed itself).

Lifecycle events are published after the transition they report is stored: a process killed
in between loses that event (the job's own state stays right). They are a view, not the record.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence
from typing import Any, Protocol

from conveyor.backends.coalesce import Coalescer
from conveyor.bus.event import Event, Published
from conveyor.bus.subscriptions import TASK_PREFIX
from conveyor.core.events import EventHub, JobEvent


class _Host(Protocol):
    events: EventHub


class Publisher(Protocol):
    """What the bridge needs of the bus."""

    @property
    def host(self) -> _Host: ...

    async def publish_many(
        self, events: Sequence[Event[Any] | object], *, connection: Any = None
    ) -> list[Published]: ...


PREFIX = "conveyor.job."


def payload(event: JobEvent) -> dict[str, Any]:
    """The JSON payload of a lifecycle event (no results or progress values: they may not be
    JSON, and can be large)."""
    return {
        "job_id": event.job_id,
        "task": event.task,
        "queue": event.queue,
        "attempt": event.attempt,
        "at": event.at,
        "will_retry": event.will_retry,
        "duration": event.duration,
        "error_code": event.error_code,
        "error_type": event.error_type,
        "error_message": event.error_message,
        "retry_delay": event.retry_delay,
        "action": event.action,
        "trace_id": event.trace_id,
        "worker_id": event.worker_id,
    }


class LifecycleBridge:
    """Publishes the chosen lifecycle kinds of every (non-bus) task on the bus."""

    def __init__(self, bus: Publisher, kinds: Sequence[str]) -> None:
        self.bus = bus
        self.kinds = tuple(kinds)
        self._batchers: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, Coalescer[Event[Any], Published]
        ] = weakref.WeakKeyDictionary()

    def install(self) -> None:
        for kind in self.kinds:
            self.bus.host.events.on(kind, self.listener)

    def _batcher(self) -> Coalescer[Event[Any], Published]:
        loop = asyncio.get_running_loop()
        batcher = self._batchers.get(loop)
        if batcher is None:
            batcher = self._batchers[loop] = Coalescer(self._publish, key=id, max_batch=200)
        return batcher

    async def _publish(self, events: list[Event[Any]]) -> list[Published | BaseException]:
        return list(await self.bus.publish_many(events))

    async def listener(self, event: JobEvent) -> None:
        if event.task.startswith(TASK_PREFIX):
            return
        name = PREFIX + event.kind
        await self._batcher().submit(
            Event(name, payload(event), key=event.job_id, headers=_trace(event))
        )


def _trace(event: JobEvent) -> dict[str, Any]:
    return {} if event.trace_id is None else {"trace_id": event.trace_id}
