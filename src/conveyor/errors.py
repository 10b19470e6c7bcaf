"""The whole Conveyor exception tree, with stable error codes.

Every exception carries a ``code``: a short, stable string that is stored with failed
jobs, printed by the CLI and safe to match on in alerting rules. The tree::

    ConveyorError                       code
    ├── ConfigurationError              configuration
    │   └── MissingDependencyError      missing_dependency
    ├── BackendError                    backend
    │   ├── StorageUnavailableError     storage_unavailable
    │   └── SchemaVersionError          schema_version
    ├── EnqueueError                    enqueue
    │   ├── InvalidArgumentsError       invalid_arguments
    │   │   └── ValidationError         validation
    │   └── SerializationError          invalid_payload
    ├── JobNotFoundError                not_found
    ├── InvalidStateError               invalid_state
    ├── JobFailedError                  (the job's own code)
    ├── JobCancelledError               cancelled
    ├── ResultTimeoutError              result_timeout
    └── HandlerSignal                   (raised inside handlers)
        ├── Retry                       retry
        └── Cancelled                   cancelled

Codes stored on failed jobs (see :class:`ErrorCode`): ``error`` (the handler raised),
``timeout``, ``poison_message`` (stalled too many times), ``unknown_task``,
``invalid_payload``, ``cancelled``, ``expired``, ``lease_lost``, ``process_died`` (a process-mode
child exited without answering), ``validation`` (the arguments or the result do not fit the
task's annotations), ``version_unsupported`` (the payload is older than the task's oldest
supported version), ``migration_failed`` (a payload migration raised).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    """Stable codes stored with failed jobs and carried in events and logs."""

    ERROR = "error"
    TIMEOUT = "timeout"
    POISON_MESSAGE = "poison_message"
    UNKNOWN_TASK = "unknown_task"
    INVALID_PAYLOAD = "invalid_payload"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    LEASE_LOST = "lease_lost"
    PROCESS_DIED = "process_died"
    VALIDATION = "validation"
    VERSION_UNSUPPORTED = "version_unsupported"
    MIGRATION_FAILED = "migration_failed"


class ConveyorError(Exception):
    """Base class of every error Conveyor raises."""

    code: str = "conveyor"


class ConfigurationError(ConveyorError):
    """The app, a task, a queue or a URL is configured wrongly."""

    code = "configuration"


class MissingDependencyError(ConfigurationError):
    """An optional extra is needed; the message carries the exact install command."""

    code = "missing_dependency"

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"{package} is not installed; install it with: pip install 'conveyor[{extra}]'"
        )
        self.package = package
        self.extra = extra


class BackendError(ConveyorError):
    """The storage backend failed."""

    code = "backend"


class StorageUnavailableError(BackendError):
    """The store cannot be opened or reached; the message names the path or URL and the fix."""

    code = "storage_unavailable"


class SchemaVersionError(BackendError):
    """The stored schema is newer than this version of Conveyor understands."""

    code = "schema_version"


class EnqueueError(ConveyorError):
    """A job could not be enqueued; nothing was stored."""

    code = "enqueue"


class InvalidArgumentsError(EnqueueError, TypeError):
    """The arguments do not fit the task's signature, or an option has a bad value."""

    code = "invalid_arguments"


class ValidationError(InvalidArgumentsError):
    """A call's arguments (or a job's result) do not fit the task's annotations.

    ``task`` and ``argument`` (``"return"`` for the result, ``None`` for the call as a whole)
    name where; ``issues`` lists each problem as ``{"loc": [...], "msg": ..., "type": ...}``.
    Raised at enqueue; in the worker the job is dead-lettered with code ``validation``.
    """

    code = "validation"
    failure_code = "validation"
    failure_type = "ValidationError"
    failure_permanent = True
    failure_traceback = ""

    def __init__(self, task: str, argument: str | None, issues: list[dict[str, Any]]) -> None:
        self.task = task
        self.argument = argument
        self.issues = issues
        where = (
            "the call"
            if argument is None
            else ("the result" if argument == "return" else f"argument {argument!r}")
        )
        details = "; ".join(
            (".".join(i["loc"]) + ": " if i.get("loc") else "") + str(i.get("msg", ""))
            for i in issues
        )
        super().__init__(f"task {task}: {where} is invalid: {details}")


class SerializationError(EnqueueError, ValueError):
    """A value cannot be serialized (at enqueue) or deserialized (in the worker)."""

    code = "invalid_payload"


class JobNotFoundError(ConveyorError, LookupError):
    """No job has this id."""

    code = "not_found"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}")
        self.job_id = job_id


class InvalidStateError(ConveyorError):
    """The action makes no sense for the job's current state."""

    code = "invalid_state"


class JobFailedError(ConveyorError):
    """Raised when awaiting the result of a job that failed permanently."""

    def __init__(self, job_id: str, code: str, error_type: str, message: str) -> None:
        super().__init__(f"job {job_id} failed [{code}] {error_type}: {message}")
        self.job_id = job_id
        self.code = code
        self.error_type = error_type
        self.message = message


class JobCancelledError(ConveyorError):
    """Raised when awaiting the result of a job that was cancelled (or expired)."""

    code = "cancelled"

    def __init__(self, job_id: str, reason: str | None = None, code: str = "cancelled") -> None:
        super().__init__(f"job {job_id} was {code}" + (f": {reason}" if reason else ""))
        self.job_id = job_id
        self.reason = reason
        self.code = code


class ResultTimeoutError(ConveyorError, TimeoutError):
    """The job did not finish within the time the caller was willing to wait."""

    code = "result_timeout"


class HandlerSignal(Exception):
    """Base of the exceptions a handler raises to steer its job (not errors)."""


class Retry(HandlerSignal):
    """Raise from a handler to retry the job, optionally after an explicit delay.

    ``raise ctx.retry(delay=30)`` or ``raise Retry(delay=timedelta(seconds=30))``. The retry
    bypasses ``retry_on``/``no_retry_on`` filters; it still counts against ``attempts``.
    """

    code = "retry"

    def __init__(self, reason: str = "retry requested", *, delay: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


class Cancelled(HandlerSignal):
    """Raised inside a handler when its job was cancelled (``ctx.raise_if_cancelled()``)."""

    code = "cancelled"


class JobTimeout(HandlerSignal):
    """Stored as the error type when a job exceeds its timeout."""

    code = "timeout"
