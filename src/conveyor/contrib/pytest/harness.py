"""The test harness: an app rebound to ``memory://`` with a fake clock, and helpers that run
the whole pipeline (:meth:`Harness.execute`) or the handler alone (:meth:`Harness.run`)."""

from __future__ import annotations

import asyncio
import inspect
import weakref
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from conveyor.app import Conveyor
from conveyor.backends.memory import MemoryFactory
from conveyor.core.context import JobContext, reset_current, set_current
from conveyor.core.handle import JobHandle, JobInfo
from conveyor.core.serialization import decode_call, encode_call
from conveyor.core.task import Task
from conveyor.domain.clock import FakeClock
from conveyor.domain.job import ErrorInfo, LogEntry
from conveyor.domain.states import JobState
from conveyor.errors import ConfigurationError
from conveyor.worker.worker import Worker, WorkerConfig

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class Outcome:
    """How a job ended under :meth:`Harness.execute`."""

    state: JobState
    result: Any
    error: ErrorInfo | None
    attempts: int
    logs: tuple[LogEntry, ...]
    progress: Any
    handle: JobHandle[Any]
    info: JobInfo

    @property
    def ok(self) -> bool:
        return self.state is JobState.COMPLETED


class Harness:
    """``app`` rebound to an in-memory store and ``clock`` until :meth:`close` (or the end of
    ``async with``), which gives the app its own store and clock back.

    Everything goes through the app's real code: middleware, validation, the serializer,
    retries, migrations. Time only moves when you (or :meth:`execute`) move it.
    """

    def __init__(self, app: Conveyor, clock: FakeClock | None = None) -> None:
        self.app = app
        self.clock = clock or FakeClock()
        self._saved = (app.factory, app.clock, app._backends, app._opening)
        # Rebinding: a fresh memory store, the fake clock, no client opened on the real store.
        app.factory = MemoryFactory("memory://")
        app.clock = self.clock
        app._backends = weakref.WeakKeyDictionary()
        app._opening = weakref.WeakKeyDictionary()
        self._closed = False

    async def __aenter__(self) -> Harness:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the memory client and give the app its store and clock back."""
        if self._closed:
            return
        self._closed = True
        await self.app.close()
        self.app.factory, self.app.clock, self.app._backends, self.app._opening = self._saved

    def close_sync(self) -> None:
        """Blocking :meth:`close` (for synchronous tests)."""
        asyncio.run(self.close())

    # -- time ---------------------------------------------------------------------------------
    def advance(self, seconds: float) -> float:
        """Move the fake clock forward; returns the new time."""
        return self.clock.advance(seconds)

    # -- running ------------------------------------------------------------------------------
    async def drain(self, *, advance: bool = True, max_rounds: int = 1000) -> Worker:
        """Run every job until none is left to run. With ``advance`` (the default), jump the
        clock to each scheduled job (delays, retry backoff) and keep going; without it, only
        what is due now runs. Returns the last worker (its ``stats``)."""
        worker = await self._run_once()
        for _ in range(max_rounds):
            due = await self._next_due()
            if due is None or (not advance and due > self.clock.now()):
                break
            if due > self.clock.now():
                self.clock.set(due)
            worker = await self._run_once()
        return worker

    async def execute(self, task: Task[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> Outcome:
        """Enqueue one job through the whole pipeline (enqueue middleware, validation, the
        serializer), run it and everything it enqueues, retries and delays included (the clock
        is advanced for them), and return how it ended. Handler errors are not raised: read
        ``outcome.state`` and ``outcome.error``."""
        handle = await task.enqueue(*args, **kwargs)
        await self.drain()
        info = await handle.info()
        result = info.result
        if info.state is JobState.COMPLETED and result is not None:
            result = task.decode_result(result)
        return Outcome(
            state=info.state,
            result=result,
            error=info.error,
            attempts=info.record.attempts,
            logs=info.logs,
            progress=info.progress,
            handle=handle,
            info=info,
        )

    async def run(self, task: Task[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Call the handler alone, once, with a job context (``current_job()`` works): no
        queue, no middleware, no retries. Arguments still go through the serializer and
        validation both ways, as they would in a worker; errors are raised as they are."""
        app = self.app
        stored_args, stored_kwargs = task.encode_arguments(args, kwargs)
        payload = encode_call(app.serializer, tuple(stored_args), stored_kwargs)
        call_args, call_kwargs = decode_call(app.serializer, payload)
        call_args, call_kwargs = task.decode_arguments(call_args, call_kwargs)
        ctx = JobContext(
            job_id="run",
            task=task.name,
            queue=task.config.queue or app.default_queue,
            attempt=1,
            max_attempts=1,
            trace_id=None,
            idempotency_key=None,
            metadata=dict(task.config.metadata),
            worker_id="harness",
            enqueued_at=self.clock.now(),
            payload_version=task.config.versions.version,
        )
        if not task.implemented:
            raise ConfigurationError(f"task {task.name} is a contract without an implementation")
        token = set_current(ctx)
        try:
            value = task.fn(*call_args, **call_kwargs)
            if inspect.isawaitable(value):
                value = await value
        finally:
            reset_current(token)
        stored = task.encode_result(value)
        if stored is None:
            return None
        return task.decode_result(app.serializer.loads(app.serializer.dumps(stored)))

    # -- reading ------------------------------------------------------------------------------
    async def jobs(self, task: Task[Any, Any] | str | None = None) -> list[JobInfo]:
        """Every job in the store (oldest first), optionally of one task."""
        name = task if isinstance(task, str) or task is None else task.name
        out = await self.app.inspect.jobs(task=name, limit=100_000)
        return list(reversed(out))

    async def assert_enqueued(
        self, task: Task[Any, Any] | str, *args: Any, **kwargs: Any
    ) -> JobInfo:
        """The one job of ``task`` whose stored arguments equal these (as stored: plain data
        for typed tasks); ``AssertionError`` listing what was enqueued otherwise."""
        jobs = await self.jobs(task)
        for job in jobs:
            if (args or kwargs) and (job.args, job.kwargs) != (list(args), kwargs):
                continue
            return job
        seen = [(j.args, j.kwargs) for j in jobs]
        raise AssertionError(f"no job of {task!r} with args={args!r} kwargs={kwargs!r}; {seen}")

    # -- internals ----------------------------------------------------------------------------
    async def _run_once(self) -> Worker:
        backend = await self.app.backend()
        stored = {row.queue for row in await backend.count_jobs()}
        declared = {t.config.queue for t in self.app.tasks.values() if t.config.queue}
        queues = tuple(sorted({self.app.default_queue, *self.app.queues, *declared, *stored}))
        worker = Worker(
            self.app,
            WorkerConfig(
                queues=queues,
                burst=True,
                burst_waits_for_scheduled=False,
                poll_interval=0.05,
                maintenance_interval=3600.0,
                scheduler=False,
            ),
        )
        await worker.run()
        return worker

    async def _next_due(self) -> float | None:
        """Now when a job is queued (a queue the last run did not know), else the run-at of
        the earliest scheduled job, else ``None``."""
        backend = await self.app.backend()
        rows = await backend.count_jobs()
        if any(r.state is JobState.QUEUED for r in rows):
            return self.clock.now()
        if not any(r.state is JobState.SCHEDULED for r in rows):
            return None
        infos = await self.app.inspect.jobs(state=JobState.SCHEDULED, limit=100_000)
        return min((i.record.run_at for i in infos), default=None)
