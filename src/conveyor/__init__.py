"""Conveyor: background jobs for Python.

Declare tasks on an app, enqueue jobs from async or sync code, run workers::

    from conveyor import Conveyor

    app = Conveyor("sqlite:///jobs.db")

    @app.task(retry=3, timeout="30s")
    async def send_email(to: str) -> None: ...

    handle = await send_email.enqueue("ada@example.com")      # async code
    handle = send_email.enqueue_sync("ada@example.com")       # sync code

    $ conveyor worker myproject.tasks:app
"""

from conveyor.app import Conveyor
from conveyor.backends.base import CancelOutcome
from conveyor.core.context import JobContext, current_job
from conveyor.core.contract import TaskContract, contract
from conveyor.core.events import JobEvent
from conveyor.core.handle import JobHandle, JobInfo
from conveyor.core.middleware import EnqueueCall, ExecuteCall, Middleware
from conveyor.core.options import QueueConfig, Retention
from conveyor.core.serialization import JSONSerializer, Serializer
from conveyor.core.task import AsyncTask, JobSpec, Task
from conveyor.domain.autoscale import AutoscalePolicy
from conveyor.domain.job import ErrorInfo, LogEntry
from conveyor.domain.retry import RetryPolicy
from conveyor.domain.states import JobState
from conveyor.errors import (
    Cancelled,
    ConfigurationError,
    ConveyorError,
    ErrorCode,
    InvalidArgumentsError,
    InvalidStateError,
    JobCancelledError,
    JobFailedError,
    JobNotFoundError,
    JobTimeout,
    KeyHeldError,
    ResultTimeoutError,
    Retry,
    ScheduleNotFoundError,
    SerializationError,
    SoftTimeLimitExceeded,
    ValidationError,
)
from conveyor.worker.worker import Worker, WorkerConfig

__version__ = "0.1.0"

__all__ = [
    "AsyncTask",
    "AutoscalePolicy",
    "CancelOutcome",
    "Cancelled",
    "ConfigurationError",
    "Conveyor",
    "ConveyorError",
    "EnqueueCall",
    "ErrorCode",
    "ErrorInfo",
    "ExecuteCall",
    "InvalidArgumentsError",
    "InvalidStateError",
    "JSONSerializer",
    "JobCancelledError",
    "JobContext",
    "JobEvent",
    "JobFailedError",
    "JobHandle",
    "JobInfo",
    "JobNotFoundError",
    "JobSpec",
    "JobState",
    "JobTimeout",
    "KeyHeldError",
    "LogEntry",
    "Middleware",
    "QueueConfig",
    "ResultTimeoutError",
    "Retention",
    "Retry",
    "RetryPolicy",
    "ScheduleNotFoundError",
    "SerializationError",
    "Serializer",
    "SoftTimeLimitExceeded",
    "Task",
    "TaskContract",
    "ValidationError",
    "Worker",
    "WorkerConfig",
    "__version__",
    "contract",
    "current_job",
]
