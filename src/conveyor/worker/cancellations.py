"""Pushed cancellation: interrupt a running job as soon as its cancellation is requested.

Backends that can push cancellations (Redis pub/sub) have the
:class:`~conveyor.backends.capabilities.PushesCancellations` capability. Pushes can be missed
(a message published while the connection is down is lost), so the heartbeat's
``cancel_requested`` flag stays the fallback on every backend: a missed push costs at most one
heartbeat interval, never the cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Protocol

from conveyor.backends.capabilities import PushesCancellations
from conveyor.worker.active import WorkerPort

if TYPE_CHECKING:
    from conveyor.worker.runner import JobRunner


class CancellingWorker(WorkerPort, Protocol):
    """A worker as the listener sees it: its held jobs and the runner that interrupts them."""

    runner: JobRunner


log = logging.getLogger("conveyor.worker")


async def listen_for_cancellations(
    worker: CancellingWorker, source: PushesCancellations, stop: asyncio.Event
) -> None:
    """Interrupt this worker's running jobs as their cancellations are pushed, until cancelled.

    A failed subscription is retried with backoff; the heartbeat covers the gap.
    """
    backoff = 0.1
    while not stop.is_set():
        try:
            async for job_id in source.subscribe_cancellations():
                backoff = 0.1
                try:
                    await _cancel_pushed(worker, job_id)
                except Exception as exc:  # noqa: BLE001 - the heartbeat will tell us again
                    log.warning(
                        "pushed cancellation of job %s not applied: %s",
                        job_id,
                        exc,
                        extra={"worker_id": worker.id, "job_id": job_id},
                    )
        except Exception as exc:  # noqa: BLE001 - the heartbeat is the fallback
            log.warning(
                "cancellation subscription failed (%s); retrying in %.1fs",
                exc,
                backoff,
                extra={"worker_id": worker.id},
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), backoff)
        backoff = min(backoff * 2, 5.0)


async def _cancel_pushed(worker: CancellingWorker, job_id: str) -> None:
    active = worker.active.get(job_id)
    if active is None or active.finishing or active.stop_reason is not None:
        return  # not ours, or already ending
    # The push names a job, not an attempt: check the request is for the attempt we hold
    # (and read its reason) before interrupting.
    record = await worker.backend.get_job(job_id)
    if (
        record is None
        or not record.cancel_requested
        or record.lease_owner != worker.id
        or record.fence != active.job.fence
        or worker.active.get(job_id) is not active
        or active.finishing
        or active.stop_reason is not None
    ):
        return
    log.info(
        "cancellation of job %s pushed; interrupting it",
        job_id,
        extra={"worker_id": worker.id, "job_id": job_id, "task": active.job.task},
    )
    worker.runner.interrupt(active, "cancel", record.cancel_reason)
