"""FastAPI (and Starlette) integration: open and close the app with the web app, an optional
in-process worker, and dependencies for the app and for job handles.

::

    from fastapi import FastAPI
    from conveyor.contrib.fastapi import ConveyorDep, JobHandleDep, lifespan

    api = FastAPI(lifespan=lifespan(app))            # opens the store at start-up

    @api.post("/signups")
    async def signup(email: str, conveyor: ConveyorDep) -> dict[str, str]:
        handle = await send_welcome.enqueue(email)
        return {"job": handle.id}

    @api.get("/jobs/{job_id}")
    async def job(handle: JobHandleDep) -> dict[str, object]:
        info = await handle.info()
        return {"state": info.state.value, "result": info.result}

``JobHandleDep`` answers 404 for an unknown ``job_id``. Install with
``pip install 'conveyor[fastapi]'``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from conveyor.app import Conveyor
from conveyor.core.handle import JobHandle
from conveyor.errors import MissingDependencyError
from conveyor.worker.worker import Worker, WorkerConfig

try:
    from fastapi import Depends, HTTPException, Request
except ImportError:  # pragma: no cover - exercised where fastapi is absent
    raise MissingDependencyError("fastapi", "fastapi") from None

__all__ = ["ConveyorDep", "JobHandleDep", "get_conveyor", "get_job_handle", "lifespan"]


def lifespan(
    app: Conveyor, *, worker: WorkerConfig | None = None
) -> Callable[[Any], contextlib.AbstractAsyncContextManager[dict[str, Any]]]:
    """A FastAPI/Starlette ``lifespan``: opens ``app``'s store at start-up (so a wrong URL
    fails the start, not the first request), puts the app on ``request.state.conveyor``, runs
    a worker in the server's event loop when ``worker`` is given, and on shutdown stops that
    worker (running jobs finish within its grace period) and closes the store."""

    @contextlib.asynccontextmanager
    async def run(_web_app: Any) -> AsyncIterator[dict[str, Any]]:
        await app.backend()
        running: Worker | None = None
        task: asyncio.Task[None] | None = None
        if worker is not None:
            running = Worker(app, worker)
            task = asyncio.create_task(running.run(), name="conveyor-worker")
        try:
            yield {"conveyor": app}
        finally:
            if running is not None and task is not None:
                running.stop()
                await task
            await app.close()

    return run


def get_conveyor(request: Request) -> Conveyor:
    """Dependency: the app the :func:`lifespan` opened."""
    app = getattr(request.state, "conveyor", None)
    if not isinstance(app, Conveyor):
        raise RuntimeError(
            "no Conveyor app on request.state: create FastAPI(lifespan=lifespan(app))"
        )
    return app


async def get_job_handle(
    job_id: str, conveyor: Annotated[Conveyor, Depends(get_conveyor)]
) -> JobHandle[Any]:
    """Dependency: the handle of the job named by the ``job_id`` path or query parameter;
    404 when no such job exists."""
    backend = await conveyor.backend()
    record = await backend.get_job(job_id)
    if record is None:
        raise HTTPException(status_code=404, detail=f"no job with id {job_id!r}")
    task = conveyor.tasks.get(record.task)
    return JobHandle(
        conveyor, job_id, record.task, decode=task.decode_result if task is not None else None
    )


ConveyorDep = Annotated[Conveyor, Depends(get_conveyor)]
JobHandleDep = Annotated[JobHandle[Any], Depends(get_job_handle)]
