"""Task hooks the worker runs around a job (issue 19): ``on_cancel`` cleanup.

``@app.task(on_cancel=cleanup)``: when a running job is cancelled, the worker interrupts the
handler, then calls ``cleanup(ctx, *args, **kwargs)`` (the job's context, already marked
cancelled, and the arguments the handler got) before it stores the job as ``cancelled``. The
hook may be a plain or an ``async`` function; it gets at most ``limit`` seconds, and an error
in it is logged, never stored: the job is cancelled either way.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.core.task import Task
    from conveyor.worker.active import ActiveJob

log = logging.getLogger("conveyor.job")


async def run_on_cancel(task: Task[Any, Any] | None, active: ActiveJob, limit: float) -> None:
    """Call the task's ``on_cancel`` hook for ``active``, if it has one and the handler ran."""
    hook = None if task is None else task.config.on_cancel
    call = active.extra.get("call")
    if hook is None or call is None or active.ctx is None:
        return
    args, kwargs = call
    try:
        async with asyncio.timeout(limit):
            if inspect.iscoroutinefunction(hook):
                await hook(active.ctx, *args, **kwargs)
            else:
                outcome = await asyncio.to_thread(hook, active.ctx, *args, **kwargs)
                if inspect.isawaitable(outcome):
                    await outcome
    except Exception:  # cleanup errors are reported; the job is cancelled anyway
        log.exception(
            "on_cancel hook of %s failed for job %s",
            active.job.task,
            active.job.id,
            extra={"job_id": active.job.id, "task": active.job.task},
        )
