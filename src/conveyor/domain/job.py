"""The job record and the values that cross the backend seam.

Backends store these fields verbatim. ``payload``, ``result`` and ``progress`` are opaque bytes
produced by the core's serializer; ``error`` and log entries are small structured values that
backends serialize however suits them (JSON text in SQL, hash fields in Redis).
All times are epoch seconds (``float``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from conveyor.domain.states import JobState


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """Why an attempt failed: a stable ``code`` plus the exception's type, message, traceback."""

    code: str
    type: str
    message: str
    traceback: str | None = None
    attempt: int = 0
    at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "type": self.type,
            "message": self.message,
            "traceback": self.traceback,
            "attempt": self.attempt,
            "at": self.at,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ErrorInfo:
        return cls(
            code=str(data.get("code", "error")),
            type=str(data.get("type", "")),
            message=str(data.get("message", "")),
            traceback=data.get("traceback"),
            attempt=int(data.get("attempt", 0)),
            at=float(data.get("at", 0.0)),
        )


def unreadable_record(reason: str, attempt: int, at: float) -> ErrorInfo:
    """The error a backend records when a job it just claimed has a stored field it cannot
    decode (a corrupt record): the job is dead-lettered with code ``invalid_payload`` at once,
    so it neither wedges the claims of its queue nor takes the jobs claimed with it down."""
    message = f"the stored job record cannot be decoded: {reason}"
    return ErrorInfo("invalid_payload", "InvalidPayload", message, None, attempt, at)


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One log line a handler wrote through ``ctx.log``; stored with the job."""

    at: float
    level: str
    message: str
    attempt: int = 0
    extra: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "level": self.level,
            "message": self.message,
            "attempt": self.attempt,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LogEntry:
        return cls(
            at=float(data.get("at", 0.0)),
            level=str(data.get("level", "info")),
            message=str(data.get("message", "")),
            attempt=int(data.get("attempt", 0)),
            extra=data.get("extra"),
        )


@dataclass(frozen=True, slots=True)
class NewJob:
    """Everything the core decided about a job before it is stored.

    ``run_at`` is ``None`` for "now" (the store's clock), or ``delay`` seconds after it when
    ``delay`` is given (so a producer whose clock is off cannot move the job); a job with
    ``run_at`` in the future is stored ``scheduled``, otherwise ``queued``. ``blocked`` jobs
    wait for their workflow parents. ``idempotency_key``: if a job holding the same key exists
    (any state in :data:`~conveyor.domain.states.KEY_HOLDING_STATES`), no new job is stored
    and the existing id is returned.
    """

    id: str
    task: str
    queue: str
    payload: bytes
    priority: int = 0
    run_at: float | None = None
    max_attempts: int = 1
    timeout: float | None = None
    expires_at: float | None = None
    idempotency_key: str | None = None
    concurrency_key: str | None = None
    trace_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    workflow_id: str | None = None
    parents: tuple[str, ...] = ()
    payload_version: int = 1
    blocked: bool = False
    delay: float | None = None


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    """The outcome of storing one :class:`NewJob`: its id and whether it was newly created."""

    id: str
    created: bool
    state: JobState


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job handed to a worker under a lease.

    ``fence`` is the lease's fencing token: it grows on every claim, and every completion,
    failure, heartbeat or release must present it; a stale token changes nothing.
    ``attempt`` is the 1-based run number counted against ``max_attempts``.
    """

    id: str
    task: str
    queue: str
    payload: bytes
    priority: int
    attempt: int
    max_attempts: int
    fence: int
    lease_until: float
    timeout: float | None
    trace_id: str | None
    idempotency_key: str | None
    metadata: dict[str, Any]
    payload_version: int
    created_at: float
    stalls: int = 0
    workflow_id: str | None = None


@dataclass(frozen=True, slots=True)
class JobRecord:
    """The full stored state of one job, as inspection returns it."""

    id: str
    task: str
    queue: str
    state: JobState
    payload: bytes
    priority: int
    run_at: float
    attempts: int
    max_attempts: int
    created_at: float
    fence: int = 0
    lease_owner: str | None = None
    lease_until: float | None = None
    timeout: float | None = None
    expires_at: float | None = None
    idempotency_key: str | None = None
    concurrency_key: str | None = None
    result: bytes | None = None
    error: ErrorInfo | None = None
    errors: tuple[ErrorInfo, ...] = ()
    progress: bytes | None = None
    logs: tuple[LogEntry, ...] = ()
    trace_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    workflow_id: str | None = None
    parents: tuple[str, ...] = ()
    started_at: float | None = None
    finished_at: float | None = None
    payload_version: int = 1
    stalls: int = 0
    cancel_requested: bool = False
    cancel_reason: str | None = None
    dead_letter_queue: str | None = None
    #: What could not be read from the store (a corrupt or hand-edited record), one line per
    #: field (``"errors: line 1 is not JSON"``); those fields hold defaults. Empty normally.
    damage: tuple[str, ...] = ()
    #: A summary read for listings: payload, result, progress, logs and the error history were
    #: not loaded (they are empty here); ``get_job`` loads them.
    summary: bool = False


@dataclass(frozen=True, slots=True)
class RecoveredJob:
    """A running job whose lease expired, as recovery left it (queued again or failed)."""

    id: str
    task: str
    queue: str
    state: JobState
    stalls: int
    attempt: int


@dataclass(frozen=True, slots=True)
class StoreDeadLetter:
    """A job a claim dead-lettered in the store instead of handing it out: its stored record
    could not be decoded (a corrupt field). Workers log and count these (see
    :meth:`~conveyor.backends.base.Backend.take_store_dead_letters`)."""

    id: str
    task: str
    queue: str
    attempt: int
    error: ErrorInfo


@dataclass(frozen=True, slots=True)
class LeaseStatus:
    """What a heartbeat learned about one held lease."""

    id: str
    held: bool
    cancel_requested: bool = False


@dataclass(frozen=True, slots=True)
class JobFilter:
    """Selects jobs for listing, counting, retrying and purging. ``None`` matches anything.

    ``finished_before`` matches jobs that finished before that time (age filters);
    ``error_code`` matches the code of the job's last error.
    """

    states: tuple[JobState, ...] | None = None
    queue: str | None = None
    task: str | None = None
    error_code: str | None = None
    finished_before: float | None = None
    workflow_id: str | None = None
    ids: tuple[str, ...] | None = None


class RetriedJobs(list[str]):
    """What :meth:`~conveyor.backends.base.Backend.retry_jobs` did: the list holds the ids it
    moved back to ``queued`` (in id order); ``refused`` maps each matching job it left alone,
    because another job holds its idempotency key, to that holder's id."""

    __slots__ = ("refused",)

    def __init__(
        self, ids: list[str] | tuple[str, ...] = (), refused: dict[str, str] | None = None
    ):
        super().__init__(ids)
        self.refused: dict[str, str] = dict(refused or {})

    def __repr__(self) -> str:
        return f"RetriedJobs({list(self)!r}, refused={self.refused!r})"


@dataclass(frozen=True, slots=True)
class CountRow:
    """Number of jobs of one task in one queue in one state."""

    queue: str
    task: str
    state: JobState
    count: int


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A live worker as the registry shows it; ``stats`` is the WorkerStats dict."""

    id: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    queues: tuple[str, ...]
    concurrency: int
    stats: dict[str, Any] = field(default_factory=dict)
