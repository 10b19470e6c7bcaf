"""Public test helpers: an in-memory app, a fake clock, and running a worker until idle.

::

    from conveyor.testing import memory_app, run_until_idle

    app = memory_app()
    ...
    await run_until_idle(app)      # processes every claimable job, then returns
"""

from __future__ import annotations

from typing import Any

from conveyor.app import Conveyor
from conveyor.domain.clock import FakeClock
from conveyor.worker.worker import Worker, WorkerConfig

__all__ = ["FakeClock", "memory_app", "run_until_idle"]


def memory_app(**options: Any) -> Conveyor:
    """A :class:`Conveyor` on ``memory://`` (options as for the constructor)."""
    return Conveyor("memory://", **options)


async def run_until_idle(
    app: Conveyor,
    *,
    queues: tuple[str, ...] | None = None,
    tasks: tuple[str, ...] | None = None,
    concurrency: int = 10,
) -> Worker:
    """Run a worker in this event loop until no job is claimable and none is running.

    Jobs scheduled in the future are left alone (advance a :class:`FakeClock` and call again).
    Returns the worker, whose ``stats`` tell what happened.
    """
    worker = Worker(
        app,
        WorkerConfig(
            queues=queues,
            tasks=tasks,
            concurrency=concurrency,
            burst=True,
            burst_waits_for_scheduled=False,
            poll_interval=0.05,
            maintenance_interval=3600.0,
        ),
    )
    await worker.run()
    return worker
