"""Typed task handles: ``Task[P, R]`` checks enqueue arguments against the function's signature."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Protocol, TypeVar

from conveyor.core.events import EventHub, Listener
from conveyor.core.middleware import Middleware
from conveyor.core.options import EnqueueOptions, Executor, check_name
from conveyor.core.schema import CallSchema
from conveyor.core.serialization import check_metadata
from conveyor.core.versions import PayloadVersions
from conveyor.domain.retry import RetryPolicy
from conveyor.errors import InvalidArgumentsError

if TYPE_CHECKING:
    from conveyor.core.handle import JobHandle

P = ParamSpec("P")
R = TypeVar("R")


class TaskHost(Protocol):
    """What a task needs of the app it is declared on: its events and its enqueue paths."""

    events: EventHub

    async def enqueue_many(self, specs: Sequence[JobSpec[Any]]) -> list[JobHandle[Any]]:
        """Enqueue many calls in one round trip."""
        ...

    def enqueue_many_sync(self, specs: Sequence[JobSpec[Any]]) -> list[JobHandle[Any]]:
        """Blocking :meth:`enqueue_many`."""
        ...

    def enqueue_on_connection_sync(
        self, connection: Any, specs: Sequence[JobSpec[Any]]
    ) -> list[JobHandle[Any]]:
        """Enqueue inside a synchronous DB connection's open transaction."""
        ...


@dataclass(frozen=True, slots=True)
class TaskConfig:
    """A task's declared settings (``None``: inherit from the queue, then the app)."""

    name: str
    queue: str | None
    priority: int
    retry: RetryPolicy | None
    timeout: float | None
    concurrency: int | None
    ttl: float | None
    executor: Executor
    metadata: dict[str, Any]
    middleware: tuple[Middleware, ...]
    # -- issue 19: typed payloads and payload versions (see core/schema.py, core/versions.py)
    validate: bool | None = None
    versions: PayloadVersions = field(default_factory=PayloadVersions)
    on_cancel: Callable[..., Any] | None = None  # cleanup after a cancellation
    max_stalls: int | None = None  # this task's stall limit (None: the app's)

    def __post_init__(self) -> None:
        check_name("task name", self.name)
        if self.queue is not None:
            check_name("queue", self.queue)
        check_metadata(self.metadata)


@dataclass(frozen=True, slots=True)
class JobSpec(Generic[R]):
    """One call of a task, checked and ready to enqueue (``task.call(...)``)."""

    task: Task[Any, R]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: EnqueueOptions


def _signature(fn: Callable[..., Any]) -> inspect.Signature:
    return inspect.signature(fn)


def _positional_range(sig: inspect.Signature) -> tuple[int, int] | None:
    """``(fewest, most)`` positional arguments when the signature has only plain parameters
    (no ``*args``, ``**kwargs`` or keyword-only ones): a call with that many positional
    arguments and no keywords fits without ``Signature.bind`` (which is slow)."""
    fewest = most = 0
    for param in sig.parameters.values():
        if param.kind not in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            return None
        most += 1
        if param.default is param.empty:
            if fewest != most - 1:
                return None
            fewest = most
    return fewest, most


class Task(Generic[P, R]):
    """A declared task. Call ``await task.enqueue(...)`` (or ``task.enqueue_sync(...)``)."""

    def __init__(self, app: TaskHost, fn: Callable[P, R], config: TaskConfig) -> None:
        self.app = app
        self.fn = fn
        self.config = config
        self.name = config.name
        self._signature = _signature(fn)
        self._positional = _positional_range(self._signature)
        self.is_async = inspect.iscoroutinefunction(fn)
        #: Validation of arguments and result against the annotations (``None``: untyped).
        self.schema = CallSchema.build(config.name, fn, config.validate)
        #: False for a contract declared without its implementation (``app.contract``).
        self.implemented = True
        #: The :class:`~conveyor.core.contract.TaskContract` this task was declared from.
        self.contract: Any = None
        functools.update_wrapper(self, fn)

    def bind_implementation(self, fn: Callable[P, R], config: TaskConfig) -> None:
        """Make ``fn`` the handler of a task registered from a contract (in place, so the
        handles producers already hold keep working)."""
        self.fn = fn
        self.config = config
        self._signature = _signature(fn)
        self._positional = _positional_range(self._signature)
        self.is_async = inspect.iscoroutinefunction(fn)
        self.schema = CallSchema.build(config.name, fn, config.validate)
        self.implemented = True

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function directly, in this process (no job is created)."""
        return self.fn(*args, **kwargs)

    def check_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Raise :class:`InvalidArgumentsError` if the call does not fit the signature."""
        fits = self._positional
        if fits is not None and not kwargs and fits[0] <= len(args) <= fits[1]:
            return
        try:
            self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidArgumentsError(f"{self.name}{self._signature}: {exc}") from None

    # -- typed payloads (issue 19) ----------------------------------------------------------
    def encode_arguments(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], *, validate: bool = True
    ) -> tuple[list[Any] | tuple[Any, ...], dict[str, Any]]:
        """The call as stored: validated and dumped to plain data when the task is typed."""
        if self.schema is None:
            return args, kwargs
        return self.schema.encode_arguments(args, kwargs, validate=validate)

    def decode_arguments(
        self, args: list[Any], kwargs: dict[str, Any]
    ) -> tuple[list[Any], dict[str, Any]]:
        """A stored call as the handler takes it (instances of the annotations)."""
        if self.schema is None:
            return args, kwargs
        return self.schema.validate_arguments(args, kwargs)

    def encode_result(self, value: Any) -> Any:
        """The handler's result as stored (validated and dumped when the task is typed)."""
        return value if self.schema is None else self.schema.encode_result(value)

    def decode_result(self, value: Any) -> Any:
        """A stored result as the caller gets it (an instance of the return annotation)."""
        return value if self.schema is None else self.schema.decode_result(value)

    # -- building calls -----------------------------------------------------------------------
    def call(self, *args: P.args, **kwargs: P.kwargs) -> JobSpec[R]:
        """A checked call for :meth:`Conveyor.enqueue_many`."""
        self.check_arguments(args, kwargs)
        return JobSpec(self, args, dict(kwargs), EnqueueOptions())

    def options(self, **options: Any) -> TaskCall[P, R]:
        """Per-call options: ``delay``, ``run_at``, ``priority``, ``queue``,
        ``idempotency_key``, ``max_attempts``, ``timeout``, ``ttl``, ``trace_id``,
        ``metadata``, ``job_id``, ``connection`` (enqueue inside that DB transaction),
        ``validate`` (``False`` skips the producer-side check of a typed task; the worker
        always validates)."""
        try:
            opts = EnqueueOptions.build(**options)
        except TypeError as exc:
            raise InvalidArgumentsError(f"unknown enqueue option: {exc}") from None
        return TaskCall(self, opts)

    # -- enqueueing ---------------------------------------------------------------------------
    async def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle[R]:
        """Enqueue one job; returns its handle once it is stored."""
        return await TaskCall(self, EnqueueOptions()).enqueue(*args, **kwargs)

    def enqueue_sync(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle[R]:
        """Blocking :meth:`enqueue` for synchronous code."""
        return TaskCall(self, EnqueueOptions()).enqueue_sync(*args, **kwargs)

    # -- events -------------------------------------------------------------------------------
    def on(self, kind: str, listener: Listener) -> Callable[[], None]:
        """Listen for ``kind`` events of this task only; returns an unsubscribe function."""
        return self.app.events.on(kind, listener, task=self.name)


class TaskCall(Generic[P, R]):
    """A task with per-call options bound (``task.options(priority="high")``)."""

    def __init__(self, task: Task[P, R], options: EnqueueOptions) -> None:
        self.task = task
        self._options = options

    def options(self, **options: Any) -> TaskCall[P, R]:
        """Add or override options."""
        return TaskCall(self.task, self._options.merged(EnqueueOptions.build(**options)))

    def call(self, *args: P.args, **kwargs: P.kwargs) -> JobSpec[R]:
        self.task.check_arguments(args, kwargs)
        return JobSpec(self.task, args, dict(kwargs), self._options)

    async def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle[R]:
        self.task.check_arguments(args, kwargs)
        spec: JobSpec[R] = JobSpec(self.task, args, dict(kwargs), self._options)
        (handle,) = await self.task.app.enqueue_many([spec])
        return handle

    def enqueue_sync(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle[R]:
        self.task.check_arguments(args, kwargs)
        spec: JobSpec[R] = JobSpec(self.task, args, dict(kwargs), self._options)
        if self._options.connection is not None:
            (handle,) = self.task.app.enqueue_on_connection_sync(self._options.connection, [spec])
            return handle
        (handle,) = self.task.app.enqueue_many_sync([spec])
        return handle


def is_running_in_loop() -> bool:
    """Whether the calling thread runs an asyncio loop (sync calls would block it)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def spec_list(specs: Sequence[JobSpec[Any]]) -> list[JobSpec[Any]]:
    """Validate a list of specs for bulk enqueue."""
    out = list(specs)
    for spec in out:
        if not isinstance(spec, JobSpec):
            raise InvalidArgumentsError(
                "enqueue_many takes task.call(...) / task.options(...).call(...) specs"
            )
    return out
