"""Job handles and the decoded job view that inspection returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from conveyor.backends.base import CancelOutcome
from conveyor.core.ports import AppPort
from conveyor.core.serialization import Serializer, decode_call
from conveyor.domain.job import ErrorInfo, JobRecord, LogEntry
from conveyor.domain.states import JobState
from conveyor.errors import (
    JobCancelledError,
    JobFailedError,
    JobNotFoundError,
    ResultTimeoutError,
    SerializationError,
)

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One step in a job's life, reconstructed from its record."""

    at: float
    event: str
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class JobInfo:
    """A job as people read it: the stored record plus decoded arguments, result, progress."""

    record: JobRecord
    args: list[Any] | None
    kwargs: dict[str, Any] | None
    result: Any
    progress: Any
    decode_error: str | None = None

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def state(self) -> JobState:
        return self.record.state

    @property
    def error(self) -> ErrorInfo | None:
        return self.record.error

    @property
    def logs(self) -> tuple[LogEntry, ...]:
        return self.record.logs

    @property
    def duration(self) -> float | None:
        r = self.record
        if r.started_at is None or r.finished_at is None:
            return None
        return max(r.finished_at - r.started_at, 0.0)

    def timeline(self) -> list[TimelineEntry]:
        """Enqueued, each failed attempt, the last start, and how it finished."""
        r = self.record
        out = [TimelineEntry(r.created_at, "enqueued", f"queue {r.queue}")]
        for err in r.errors:
            if err.code in ("cancelled", "expired") and r.state.value == err.code:
                continue
            out.append(
                TimelineEntry(
                    err.at, "attempt_failed", f"attempt {err.attempt}: [{err.code}] {err.message}"
                )
            )
        if r.started_at is not None:
            out.append(TimelineEntry(r.started_at, "started", f"attempt {r.attempts}"))
        if r.finished_at is not None:
            detail = (
                r.error.message
                if r.error is not None and r.state is not JobState.COMPLETED
                else None
            )
            out.append(TimelineEntry(r.finished_at, r.state.value, detail))
        elif r.state in (JobState.SCHEDULED,) and r.attempts > 0:
            out.append(TimelineEntry(r.run_at, "retry_scheduled", f"attempt {r.attempts + 1}"))
        out.sort(key=lambda e: e.at)
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (used by ``--json`` and the dashboard)."""
        r = self.record
        return {
            "id": r.id,
            "task": r.task,
            "queue": r.queue,
            "state": r.state.value,
            "priority": r.priority,
            "args": self.args,
            "kwargs": self.kwargs,
            "result": self.result,
            "progress": self.progress,
            "attempts": r.attempts,
            "max_attempts": r.max_attempts,
            "stalls": r.stalls,
            "run_at": r.run_at,
            "created_at": r.created_at,
            "started_at": r.started_at,
            "finished_at": r.finished_at,
            "duration": self.duration,
            "timeout": r.timeout,
            "expires_at": r.expires_at,
            "idempotency_key": r.idempotency_key,
            "trace_id": r.trace_id,
            "metadata": r.metadata,
            "lease_owner": r.lease_owner,
            "lease_until": r.lease_until,
            "error": r.error.to_dict() if r.error else None,
            "errors": [e.to_dict() for e in r.errors],
            "logs": [entry.to_dict() for entry in r.logs],
            "dead_letter_queue": r.dead_letter_queue,
            "cancel_requested": r.cancel_requested,
            "timeline": [
                {"at": e.at, "event": e.event, "detail": e.detail} for e in self.timeline()
            ],
            "decode_error": self.decode_error,
        }


def decode_record(serializer: Serializer, record: JobRecord) -> JobInfo:
    """Decode what can be decoded; a corrupt payload is reported, never raised."""
    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None
    result: Any = None
    progress: Any = None
    problems: list[str] = []
    try:
        args, kwargs = decode_call(serializer, record.payload)
    except SerializationError as exc:
        problems.append(f"payload: {exc}")
    if record.result is not None:
        try:
            result = serializer.loads(record.result)
        except SerializationError as exc:
            problems.append(f"result: {exc}")
    if record.progress is not None:
        try:
            progress = serializer.loads(record.progress)
        except SerializationError as exc:
            problems.append(f"progress: {exc}")
    return JobInfo(record, args, kwargs, result, progress, "; ".join(problems) or None)


class JobHandle(Generic[R]):
    """A reference to one job: id, state, progress, logs, result, cancel.

    Every coroutine method has a blocking ``*_sync`` twin for synchronous code.
    """

    def __init__(
        self,
        app: AppPort,
        job_id: str,
        task: str,
        *,
        created: bool = True,
        decode: Callable[[Any], Any] | None = None,
    ) -> None:
        self.app = app
        self.id = job_id
        self.task = task
        #: Turns the stored result into the task's return type (typed tasks).
        self._decode = decode
        #: False when an idempotency key matched an existing job (this handle points to it).
        self.created = created

    def __repr__(self) -> str:
        return f"<JobHandle {self.task} {self.id}>"

    async def info(self) -> JobInfo:
        """The decoded job; raises :class:`JobNotFoundError` if it no longer exists."""
        record = await (await self.app.backend()).get_job(self.id)
        if record is None:
            raise JobNotFoundError(self.id)
        return decode_record(self.app.serializer, record)

    async def state(self) -> JobState:
        return (await self.info()).state

    async def progress(self) -> Any:
        return (await self.info()).progress

    async def logs(self) -> list[LogEntry]:
        return list((await self.info()).logs)

    async def cancel(self, reason: str | None = None) -> CancelOutcome:
        """Cancel: a waiting job at once; a running one is told through its context."""
        backend = await self.app.backend()
        return await backend.cancel(self.id, reason, self.app.backend_now())

    async def result(self, timeout: float | None = None) -> R:
        """Wait for the job to finish and return its result.

        Raises :class:`JobFailedError` (failed permanently), :class:`JobCancelledError`
        (cancelled or expired) or :class:`ResultTimeoutError` (still running after ``timeout``).
        """
        backend = await self.app.backend()
        wait = 365 * 24 * 3600.0 if timeout is None else timeout
        record = await backend.wait_for_finish(self.id, wait)
        if record is None:
            raise JobNotFoundError(self.id)
        if record.state is JobState.COMPLETED:
            value: R = (
                self.app.serializer.loads(record.result) if record.result is not None else None  # type: ignore[assignment]
            )
            if self._decode is not None:
                value = self._decode(value)
            return value
        if record.state is JobState.FAILED:
            err = record.error or ErrorInfo("error", "Error", "failed")
            raise JobFailedError(self.id, err.code, err.type, err.message)
        if record.state in (JobState.CANCELLED, JobState.EXPIRED):
            raise JobCancelledError(self.id, record.cancel_reason, code=record.state.value)
        raise ResultTimeoutError(
            f"job {self.id} is still {record.state.value} after waiting {timeout}s"
        )

    # -- blocking twins -----------------------------------------------------------------------
    def info_sync(self) -> JobInfo:
        return self.app.portal.run(self.info())

    def state_sync(self) -> JobState:
        return self.app.portal.run(self.state())

    def progress_sync(self) -> Any:
        return self.app.portal.run(self.progress())

    def logs_sync(self) -> list[LogEntry]:
        return self.app.portal.run(self.logs())

    def cancel_sync(self, reason: str | None = None) -> CancelOutcome:
        return self.app.portal.run(self.cancel(reason))

    def result_sync(self, timeout: float | None = None) -> R:
        return self.app.portal.run(self.result(timeout))
