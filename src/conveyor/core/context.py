"""The handler context: what a running job can know and do.

Inside a handler, ``conveyor.current_job()`` returns the :class:`JobContext` of the job being
run (a contextvar, so it works in async handlers, thread handlers and process handlers alike).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from conveyor.domain.durations import Duration, parse_duration
from conveyor.domain.job import LogEntry
from conveyor.errors import Cancelled, ConveyorError, Retry


class ContextHost(Protocol):
    """What the worker provides to a running job's context."""

    def report_progress(self, ctx: JobContext, value: Any) -> None: ...

    async def heartbeat_now(self, ctx: JobContext) -> bool: ...

    def is_shutting_down(self) -> bool: ...

    async def open_transaction(self, ctx: JobContext) -> Any: ...


class JobLog:
    """``ctx.log.info("…", key=value)``: log lines stored with the job (and sent to logging)."""

    def __init__(self, ctx: JobContext) -> None:
        self._ctx = ctx

    def _add(self, level: str, message: str, extra: dict[str, Any]) -> None:
        entry = LogEntry(
            at=time.time(),
            level=level,
            message=str(message),
            attempt=self._ctx.attempt,
            extra=extra or None,
        )
        with self._ctx._log_lock:
            self._ctx._pending_logs.append(entry)

    def debug(self, message: str, **extra: Any) -> None:
        self._add("debug", message, extra)

    def info(self, message: str, **extra: Any) -> None:
        self._add("info", message, extra)

    def warning(self, message: str, **extra: Any) -> None:
        self._add("warning", message, extra)

    def error(self, message: str, **extra: Any) -> None:
        self._add("error", message, extra)


@dataclass(eq=False)
class JobContext:
    """The running job, as its handler sees it."""

    job_id: str
    task: str
    queue: str
    attempt: int
    max_attempts: int
    trace_id: str | None
    idempotency_key: str | None
    metadata: dict[str, Any]
    worker_id: str
    enqueued_at: float
    fence: int = 0
    payload_version: int = 1
    _host: ContextHost | None = field(default=None, repr=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    # A plain flag (set on the worker's loop, read from any thread: a bool attribute is read
    # atomically); a threading.Event per job costs more than the rest of the context.
    _cancel_flag: bool = field(default=False, repr=False)
    _cancel_reason: str | None = field(default=None, repr=False)
    _cancel_event: asyncio.Event | None = field(default=None, repr=False)
    _pending_logs: list[LogEntry] = field(default_factory=list, repr=False)
    _log_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    log: JobLog = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.log = JobLog(self)

    # -- control ----------------------------------------------------------------------------
    def retry(self, delay: Duration | None = None, reason: str = "retry requested") -> Retry:
        """An exception to ``raise``: retry this job after ``delay`` (e.g. a ``Retry-After``).

        Counts against the attempts; bypasses ``retry_on``/``no_retry_on``.
        """
        seconds = None if delay is None else parse_duration(delay, field="retry delay")
        return Retry(reason, delay=seconds)

    def progress(self, value: Any) -> None:
        """Report progress (a number or a JSON-able dict); stored with the job, fire-and-forget."""
        if self._host is not None:
            self._host.report_progress(self, value)

    async def heartbeat(self) -> bool:
        """Extend the lease now (the worker also does it automatically); ``False`` if lost."""
        if self._host is None:
            return True
        return await self._host.heartbeat_now(self)

    def is_shutting_down(self) -> bool:
        """Whether the worker is draining: finish quickly or raise to be retried later."""
        return self._host.is_shutting_down() if self._host is not None else False

    async def transaction(self) -> Any:
        """A database connection in an open transaction that commits **together with this
        job's completion** (PostgreSQL, or SQLite for tables in the queue's own file; async
        handlers).

        Do the handler's own writes through it; when the handler returns, the worker writes the
        job's log lines and marks it completed in the same transaction (fenced by the lease) and
        commits. If the handler raises, the lease was lost, or the worker dies first, everything
        rolls back and the job runs again — so effects that live in the database happen
        exactly once. Calling it again returns the same connection.

        PostgreSQL: a ``psycopg`` async connection from the backend's pool. SQLite: a
        ``sqlite3.Connection`` to the queue's file after ``BEGIN IMMEDIATE`` — it holds the
        file's write lock until the job completes, so keep it short: every other writer waits
        for it, this worker's heartbeats included (one longer than half a lease has the job
        abandoned and run again).
        """
        if self._host is None:
            raise ConveyorError("transaction() needs a running worker")
        return await self._host.open_transaction(self)

    # -- cancellation -----------------------------------------------------------------------
    @property
    def cancelled(self) -> bool:
        """Whether cancellation was requested (check it in long loops)."""
        return self._cancel_flag

    @property
    def cancel_reason(self) -> str | None:
        return self._cancel_reason

    def raise_if_cancelled(self) -> None:
        """Raise :class:`~conveyor.errors.Cancelled` if cancellation was requested."""
        if self._cancel_flag:
            raise Cancelled(self._cancel_reason or "cancelled")

    async def wait_cancelled(self) -> None:
        """Block until cancellation is requested (race it against your own work)."""
        if self._cancel_event is None:
            self._cancel_event = asyncio.Event()
            if self._cancel_flag:
                self._cancel_event.set()
        await self._cancel_event.wait()

    def _request_cancel(self, reason: str | None) -> None:
        """Called by the worker (on its loop) when the job is cancelled."""
        self._cancel_reason = reason
        self._cancel_flag = True
        if self._cancel_event is not None:
            self._cancel_event.set()

    def _take_logs(self) -> list[LogEntry]:
        with self._log_lock:
            logs, self._pending_logs = self._pending_logs, []
        return logs


_current: contextvars.ContextVar[JobContext] = contextvars.ContextVar("conveyor_job")


def current_job() -> JobContext:
    """The context of the job running in this task/thread; raises outside a job."""
    try:
        return _current.get()
    except LookupError:
        raise ConveyorError("current_job() was called outside a running Conveyor job") from None


def set_current(ctx: JobContext) -> contextvars.Token[JobContext]:
    return _current.set(ctx)


def reset_current(token: contextvars.Token[JobContext]) -> None:
    _current.reset(token)
