"""Running a delivery: the task function behind each subscription.

The delivery job's one argument is the event's envelope. The function decodes it into an
:class:`~conveyor.bus.event.Event`, calls the handler, and records the outcome in the store
before the job itself completes or fails: ``handled`` once the handler returned (so a replay
will not run it again), ``dead`` when this attempt's failure is final (the same decision the
worker makes next, :func:`~conveyor.domain.failure.decide_failure`). Whatever ends a delivery
job without passing here (a timeout, a cancellation, a worker that died too often) is caught
by the lifecycle listener registered for the task, and, for ordered chains, by the worker's
periodic :meth:`~conveyor.backends.capabilities.events.EventBusStore.bus_settle`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from conveyor.bus.envelope import EventDecodeError, decode
from conveyor.bus.ports import BusCore
from conveyor.core.context import JobContext, current_job
from conveyor.core.events import JobEvent
from conveyor.domain.events import DeliveryStatus
from conveyor.domain.failure import decide_failure
from conveyor.errors import Cancelled

log = logging.getLogger("conveyor.bus")

Deliver = Callable[[Any], Awaitable[None]]


def make_deliver(bus: BusCore, subscription: str, handler: Callable[..., Any]) -> Deliver:
    """The task function delivering events to ``handler`` for ``subscription``."""
    is_async = inspect.iscoroutinefunction(handler)

    async def deliver(envelope: Any) -> None:
        ctx = current_job()
        try:
            event = decode(envelope, bus.types, subscription, ctx.attempt)
        except EventDecodeError:
            await finish_quietly(bus, ctx.job_id, DeliveryStatus.DEAD)
            raise
        try:
            if is_async:
                await handler(event)
            else:
                # The context (current_job()) is copied into the thread.
                await asyncio.to_thread(handler, event)
        except Exception as exc:
            if not isinstance(exc, Cancelled) and is_final(bus, exc, ctx):
                await finish_quietly(bus, ctx.job_id, DeliveryStatus.DEAD)
            raise
        # Recorded before the job completes: a crash in between reruns the handler (at least
        # once), never loses the delivery. A store error here fails the attempt (retried).
        backend = await bus.store()
        await backend.bus_finish(ctx.job_id, DeliveryStatus.HANDLED, bus.host.backend_now())

    deliver.__name__ = f"deliver_{subscription}"
    deliver.__qualname__ = f"deliver[{subscription}]"
    deliver.__module__ = getattr(handler, "__module__", __name__)
    deliver.__doc__ = f"Deliver events to subscription {subscription!r}."
    return deliver


def is_final(bus: BusCore, exc: BaseException, ctx: JobContext) -> bool:
    """Whether the worker will dead-letter the job for this failure (no retry follows)."""
    host = bus.host
    task = host.tasks.get(ctx.task)
    decision = decide_failure(
        exc,
        policy=host.retry_policy_for(task, ctx.queue),
        attempt=ctx.attempt,
        max_attempts=ctx.max_attempts,
        task_known=True,
        permanent=False,
        now=host.now(),
    )
    return not decision.will_retry


async def finish_quietly(bus: BusCore, job_id: str, status: DeliveryStatus) -> None:
    """Record a delivery's outcome; a store error is logged (the worker's settle pass and the
    job's own state still tell the truth)."""
    with contextlib.suppress(asyncio.CancelledError):
        try:
            backend = await bus.store()
            await backend.bus_finish(job_id, status, bus.host.backend_now())
        except Exception as exc:  # noqa: BLE001
            log.warning("could not record delivery %s as %s: %s", job_id, status.value, exc)


def lifecycle_listener(bus: BusCore) -> Callable[[JobEvent], Awaitable[None]]:
    """A listener for ``dead`` and ``cancelled`` events of delivery tasks: the delivery ended
    without its function recording it (a timeout, a cancellation, a poison message)."""

    async def ended(event: JobEvent) -> None:
        await finish_quietly(bus, event.job_id, DeliveryStatus.DEAD)

    return ended
