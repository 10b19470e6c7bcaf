"""From a claimed job's stored payload to the handler's arguments (issue 19).

Payload version first (a job newer than this worker waits for a newer one; one older than the
task's oldest supported version is dead-lettered), then decoding, migrations, the signature
check and validation against the task's annotations. Every failure here is permanent: the
same bytes would fail the same way on every attempt.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conveyor.backends.base import Backend
from conveyor.backends.capabilities import Defers
from conveyor.core.serialization import Serializer, decode_call
from conveyor.errors import ErrorCode, SerializationError

if TYPE_CHECKING:
    from conveyor.core.task import Task
    from conveyor.domain.job import ClaimedJob


#: How long a job of a newer payload version waits before a worker looks at it again.
NEWER_PAYLOAD_DELAY = 5.0


async def defer_job(
    backend: Backend, job_id: str, fence: int, delay: float, now: float | None
) -> bool:
    """Hand a running job back for ``delay`` seconds without counting the attempt (the
    :class:`~conveyor.backends.capabilities.Defers` capability; every shipped backend has it,
    others hand it back at once)."""
    if isinstance(backend, Defers):
        return await backend.defer(job_id, fence, delay, now)
    return await backend.release(job_id, fence, now)


class InvalidPayload(Exception):
    """The stored payload cannot be decoded or does not fit the signature; permanent."""

    failure_code = ErrorCode.INVALID_PAYLOAD
    failure_type = "InvalidPayload"
    failure_permanent = True
    failure_traceback = ""


class NewerPayload(Exception):
    """The job was enqueued by a newer version of the task than this worker runs: it is handed
    back (the attempt not counted) for a newer worker."""

    def __init__(self, task: str, payload_version: int, version: int) -> None:
        super().__init__(
            f"task {task}: payload version {payload_version} is newer than this worker's "
            f"({version}); leaving it for a newer worker"
        )
        self.payload_version = payload_version


class NotImplementedTask(Exception):
    """A contract declared here without an implementation; permanent."""

    failure_code = ErrorCode.UNKNOWN_TASK
    failure_type = "UnknownTask"
    failure_permanent = True
    failure_traceback = ""


class StalledTooOften(Exception):
    """The job stalled more often than its task allows (a per-task ``max_stalls`` below the
    app's: recovery, which applies the highest limit, re-queued it); permanent."""

    failure_code = ErrorCode.POISON_MESSAGE
    failure_type = "PoisonMessage"
    failure_permanent = True
    failure_traceback = ""


def recovery_stall_limit(tasks: dict[str, Task[Any, Any]], app_limit: int) -> int:
    """The stall limit stall recovery applies: the highest of the app's and the tasks' own
    (each task's lower limit is then enforced when its job is next claimed)."""
    own = [t.config.max_stalls for t in tasks.values() if t.config.max_stalls is not None]
    return max([app_limit, *own])


def prepare_call(
    task: Task[Any, Any], job: ClaimedJob, serializer: Serializer, max_stalls: int | None = None
) -> tuple[list[Any], dict[str, Any]]:
    """The handler's ``(args, kwargs)`` for ``job``; raises one of the exceptions above,
    :class:`~conveyor.core.versions.VersionUnsupported`,
    :class:`~conveyor.core.versions.MigrationError` or
    :class:`~conveyor.errors.ValidationError`."""
    if not task.implemented:
        raise NotImplementedTask(
            f"task {task.name} is a contract without an implementation in this worker; "
            "implement it (app.implement) in the worker's code"
        )
    limit = task.config.max_stalls if task.config.max_stalls is not None else max_stalls
    if limit is not None and job.stalls > limit:
        raise StalledTooOften(
            f"task {task.name}: the job stalled {job.stalls} times (its workers died or hung), "
            f"more than the task allows ({limit}); dead-lettered as a poison message"
        )
    versions = task.config.versions
    plan = versions.plan(job.payload_version)
    if plan == "wait":
        raise NewerPayload(task.name, job.payload_version, versions.version)
    if plan == "too_old":
        raise versions.too_old(task.name, job.payload_version)
    try:
        args, kwargs = decode_call(serializer, job.payload)
    except SerializationError as exc:
        raise InvalidPayload(str(exc)) from None
    if job.payload_version < versions.version:
        args, kwargs = versions.upgrade(task.name, job.payload_version, args, kwargs)
    if task.schema is not None:
        return task.decode_arguments(args, kwargs)  # ValidationError names the argument
    try:
        task.check_arguments(tuple(args), kwargs)
    except TypeError as exc:
        raise InvalidPayload(str(exc)) from None
    return args, kwargs
