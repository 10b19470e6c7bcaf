"""The core of an app: tasks, queues, the backend client per event loop, events, middleware,
enqueueing, inspection and dead letters.

:class:`App` is everything the core itself provides; :class:`conveyor.Conveyor` (in
:mod:`conveyor.app`, the composition root) adds the feature packages that build on it, such as
schedules. Handles, tasks and inspection depend on narrow protocols of it (see
:mod:`conveyor.core.ports`), never on the class itself.
"""

from __future__ import annotations

import asyncio
import sys
import time
import weakref
from collections.abc import Callable, Coroutine, Mapping, Sequence
from types import TracebackType
from typing import Any, ParamSpec, Self, TypeVar, overload

from conveyor.backends import DEFAULT_URL, factory_from_url
from conveyor.backends.base import Backend, BackendFactory, CancelOutcome
from conveyor.backends.capabilities import SyncTransactions, Transactions
from conveyor.core.contract import TaskContract
from conveyor.core.contract import contract as make_contract
from conveyor.core.contract import implement as implement_contract
from conveyor.core.contract import register as register_contract
from conveyor.core.events import EventHub, JobEvent, Listener
from conveyor.core.handle import JobHandle
from conveyor.core.inspect import DeadLetters, Inspector
from conveyor.core.middleware import EnqueueCall, Middleware, compose_enqueue
from conveyor.core.options import (
    EnqueueOptions,
    Executor,
    QueueConfig,
    Retention,
    coerce_retry,
)
from conveyor.core.portal import Portal, blocking
from conveyor.core.serialization import Serializer, encode_call
from conveyor.core.serializers import recorded
from conveyor.core.task import AsyncTask, JobSpec, Task, TaskConfig, TaskDecorator, spec_list
from conveyor.core.versions import Migration, PayloadVersions
from conveyor.domain.autoscale import AutoscalePolicy
from conveyor.domain.clock import Clock
from conveyor.domain.durations import Duration, optional_duration, parse_duration
from conveyor.domain.ids import new_job_id
from conveyor.domain.job import NewJob
from conveyor.domain.priority import parse_priority
from conveyor.domain.retry import NO_RETRY, RetryPolicy
from conveyor.errors import ConfigurationError, InvalidArgumentsError

P = ParamSpec("P")
R = TypeVar("R")


def default_task_name(fn: Callable[..., Any]) -> str:
    """``module.qualname``; for ``__main__`` the module's real import name when known."""
    module = fn.__module__
    if module == "__main__":
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        if spec is not None and spec.name:
            module = spec.name
    return f"{module}.{fn.__qualname__}"


class App:
    """The core of a Conveyor application (use :class:`conveyor.Conveyor`).

    ``url`` picks the store: ``sqlite:///jobs.db`` (the default when ``None``),
    ``postgresql://…``, ``redis://…`` or ``memory://``. The App never reads environment
    variables; the CLI passes ``CONVEYOR_URL`` in when it is set. ``serializer``: ``"json"``
    (default), ``"orjson"``, ``"msgpack"`` or your own object (``docs/serializers.md``).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        default_queue: str = "default",
        retry: RetryPolicy | int | None = None,
        timeout: Duration | None = None,
        lease: Duration = 30.0,
        heartbeat_interval: Duration = 1.0,
        max_stalls: int = 3,
        retention: Retention | None = None,
        serializer: Serializer | str | None = None,
        serializers: Sequence[Serializer] = (),
        clock: Clock | None = None,
        backend_options: dict[str, Any] | None = None,
        backend_factory: BackendFactory | None = None,
    ) -> None:
        self.url = url or DEFAULT_URL
        self.factory = backend_factory or factory_from_url(self.url, **(backend_options or {}))
        self.default_queue = default_queue
        self.retry = coerce_retry(retry) or NO_RETRY
        self.timeout = optional_duration(timeout, field="timeout")
        self.lease = parse_duration(lease, field="lease")
        self.heartbeat_interval = parse_duration(heartbeat_interval, field="heartbeat_interval")
        if self.lease <= 0 or self.heartbeat_interval <= 0:
            raise ConfigurationError("lease and heartbeat_interval must be positive")
        if self.heartbeat_interval * 2 > self.lease:
            raise ConfigurationError(
                f"heartbeat_interval ({self.heartbeat_interval}s) must be at most half the "
                f"lease ({self.lease}s), or healthy jobs would be recovered as stalled"
            )
        if max_stalls < 0:
            raise ConfigurationError("max_stalls must be >= 0")
        self.max_stalls = max_stalls
        self.retention = retention or Retention()
        # issue 19: ``json`` (default), ``orjson``, ``msgpack`` or an object; the stored bytes
        # record which one wrote them, and ``serializers`` are extra readers.
        self.serializer: Serializer = recorded(serializer, serializers)
        self.clock = clock
        self.tasks: dict[str, Task[Any, Any]] = {}
        self.queues: dict[str, QueueConfig] = {}
        self._undeclared_queues: dict[str, QueueConfig] = {}
        self.middleware: list[Middleware] = []
        self.events = EventHub()
        self.portal = Portal(on_exit=self._close_at_exit)
        self._backends: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Backend] = (
            weakref.WeakKeyDictionary()
        )
        self._opening: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, asyncio.Future[Backend]
        ] = weakref.WeakKeyDictionary()
        self.inspect = Inspector(self)
        self.dead_letters = DeadLetters(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.factory.describe()['url']} tasks={len(self.tasks)}>"

    # -- time ---------------------------------------------------------------------------------
    def now(self) -> float:
        """The app's notion of now (the fake clock in tests)."""
        return self.clock.now() if self.clock is not None else time.time()

    def backend_now(self) -> float | None:
        """What to pass to backends: ``None`` (the store's clock) unless a clock is injected."""
        return self.clock.now() if self.clock is not None else None

    # -- declaring ----------------------------------------------------------------------------
    @overload
    def task(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> AsyncTask[P, R]: ...

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self,
        *,
        name: str | None = None,
        queue: str | None = None,
        priority: int | str = 0,
        retry: RetryPolicy | int | None = None,
        timeout: Duration | None = None,
        soft_timeout: Duration | None = None,
        concurrency: int | None = None,
        ttl: Duration | None = None,
        executor: Executor | None = None,
        metadata: dict[str, Any] | None = None,
        middleware: Sequence[Middleware] = (),
        schedule: dict[str, Any] | None = None,
        validate: bool | None = None,
        version: int | None = None,
        since: int | None = None,
        migrate: Mapping[int, Migration] | None = None,
        on_cancel: Callable[..., Any] | None = None,
        max_stalls: int | None = None,
    ) -> TaskDecorator: ...

    def task(  # type: ignore[misc]
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        priority: int | str = 0,
        retry: RetryPolicy | int | None = None,
        timeout: Duration | None = None,
        soft_timeout: Duration | None = None,
        concurrency: int | None = None,
        ttl: Duration | None = None,
        executor: Executor | None = None,
        metadata: dict[str, Any] | None = None,
        middleware: Sequence[Middleware] = (),
        schedule: dict[str, Any] | None = None,
        validate: bool | None = None,
        version: int | None = None,
        since: int | None = None,
        migrate: Mapping[int, Migration] | None = None,
        on_cancel: Callable[..., Any] | None = None,
        max_stalls: int | None = None,
    ) -> Any:
        """Declare a task (decorator, with or without options).

        ``executor``: ``"async"`` (default for ``async def``), ``"thread"`` (default for plain
        functions) or ``"process"`` (CPU-bound; runs in a child process that is killed on
        timeout). ``soft_timeout``: raise :class:`~conveyor.errors.SoftTimeLimitExceeded`
        inside the handler after this long (shorter than the timeout), so it can clean up or
        return early. ``concurrency``: most jobs of this task one worker runs at once.
        ``schedule``: an inline schedule named after the task, e.g.
        ``{"cron": "0 3 * * *", "timezone": "Europe/Paris"}`` (see :meth:`schedule`).
        ``validate``: check arguments and result against the annotations (``None``: when one
        holds a pydantic model, dataclass or TypedDict; see ``docs/validation.md``).
        ``version``, ``since``, ``migrate``: the payload version jobs are stamped with, the
        oldest one a worker still runs, and the migrations between (``docs/versioning.md``).
        ``on_cancel``: cleanup called as ``on_cancel(ctx, *args, **kwargs)`` after a running
        job was cancelled and its handler stopped, before it is stored as cancelled.
        ``max_stalls``: this task's stall limit (the app's ``max_stalls`` otherwise): a job
        whose worker died more often is dead-lettered with code ``poison_message``.
        """

        def decorate(func: Callable[..., Any]) -> Task[Any, Any]:
            import inspect as _inspect

            is_async = _inspect.iscoroutinefunction(func)
            chosen: Executor = executor or ("async" if is_async else "thread")
            if chosen not in ("async", "thread", "process"):
                raise ConfigurationError(
                    f"executor must be async, thread or process, not {chosen!r}"
                )
            if chosen == "async" and not is_async:
                raise ConfigurationError(f"executor='async' needs an async def function ({func!r})")
            if chosen == "process" and is_async:
                raise ConfigurationError("executor='process' needs a plain (def) function")
            if concurrency is not None and concurrency < 1:
                raise ConfigurationError("task concurrency must be >= 1")
            if max_stalls is not None and (not isinstance(max_stalls, int) or max_stalls < 0):
                raise ConfigurationError("task max_stalls must be an int >= 0")
            try:
                prio = parse_priority(priority)
                config = TaskConfig(
                    name=name or default_task_name(func),
                    queue=queue,
                    priority=prio,
                    retry=coerce_retry(retry),
                    timeout=optional_duration(timeout, field="timeout"),
                    soft_timeout=optional_duration(soft_timeout, field="soft_timeout"),
                    concurrency=concurrency,
                    ttl=optional_duration(ttl, field="ttl"),
                    executor=chosen,
                    metadata=dict(metadata or {}),
                    middleware=tuple(middleware),
                    validate=validate,
                    versions=PayloadVersions.build(
                        name or default_task_name(func), version, since, migrate
                    ),
                    on_cancel=on_cancel,
                    max_stalls=max_stalls,
                )
            except (ValueError, InvalidArgumentsError) as exc:
                raise ConfigurationError(f"task {func.__qualname__}: {exc}") from None
            soft, hard = config.soft_timeout, config.timeout or self.timeout
            if soft is not None and (soft <= 0 or (hard is not None and soft >= hard)):
                raise ConfigurationError(
                    f"task {config.name}: soft_timeout ({soft:g}s) must be greater than zero "
                    + (f"and shorter than the timeout ({hard:g}s)" if hard is not None else "")
                )
            if config.name in self.tasks:
                raise ConfigurationError(f"a task named {config.name!r} is already declared")
            kind = AsyncTask if is_async else Task
            task: Task[Any, Any] = kind(self, func, config)
            self.tasks[config.name] = task
            if schedule is not None:
                self._declare_task_schedule(config.name, task, schedule)
            return task

        return decorate(fn) if fn is not None else decorate

    # -- contracts (issue 19; see core/contract.py) ----------------------------------------
    @overload
    def contract(self, spec: TaskContract[P, R], /) -> Task[P, R]: ...

    @overload
    def contract(self, *, name: str, **options: Any) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def contract(  # type: ignore[misc]
        self, spec: TaskContract[P, R] | None = None, /, *, name: str = "", **options: Any
    ) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
        """Register a task by its contract, without its implementation: producers enqueue
        typed jobs of it; a worker must :meth:`implement` it. ``app.contract(spec)`` with a
        :func:`conveyor.contract` object, or ``@app.contract(name=..., ...)`` on a stub."""
        if spec is not None:
            return register_contract(self, self.tasks, spec)

        def declare(stub: Callable[P, R]) -> Task[P, R]:
            spec = make_contract(name=name or default_task_name(stub), **options)(stub)
            return register_contract(self, self.tasks, spec)

        return declare

    def implement(
        self,
        spec: TaskContract[P, R] | Task[P, R],
        *,
        executor: Executor | None = None,
        concurrency: int | None = None,
        middleware: Sequence[Middleware] = (),
        since: int | None = None,
        migrate: Mapping[int, Migration] | None = None,
        on_cancel: Callable[..., Any] | None = None,
    ) -> Callable[[Callable[P, R]], Task[P, R]]:
        """Decorator: ``fn`` implements the contract (its signature must match; checked now)."""
        found = spec.contract if isinstance(spec, Task) else spec
        if not isinstance(found, TaskContract):
            raise ConfigurationError(f"{spec!r} is not a contract")
        chosen: TaskContract[P, R] = found

        def decorate(fn: Callable[P, R]) -> Task[P, R]:
            return implement_contract(
                self,
                self.tasks,
                chosen,
                fn,
                executor=executor,
                concurrency=concurrency,
                middleware=middleware,
                since=since,
                migrate=migrate,
                on_cancel=on_cancel,
            )

        return decorate

    def queue(
        self,
        name: str,
        *,
        concurrency: int | None = None,
        priority: int | str = 0,
        retry: RetryPolicy | int | None = None,
        dead_letter: str | None = None,
        autoscale: AutoscalePolicy | Mapping[str, Any] | None = None,
    ) -> QueueConfig:
        """Declare a queue's settings (queues without a declaration use defaults).

        ``autoscale`` is an :class:`~conveyor.AutoscalePolicy` or seed 000's ``autoScale``
        object (``{"minWorkers": 1, "maxWorkers": 8, "targetWaitMs": 30000, ...}``)."""
        if not name:
            raise ConfigurationError("a queue needs a name")
        if concurrency is not None and concurrency < 1:
            raise ConfigurationError("queue concurrency must be >= 1")
        try:
            prio = parse_priority(priority)
            scaling = (
                AutoscalePolicy.from_seed000(dict(autoscale))
                if isinstance(autoscale, Mapping)
                else autoscale
            )
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"queue {name}: {exc}") from None
        if scaling is not None and not isinstance(scaling, AutoscalePolicy):
            raise ConfigurationError(
                f"queue {name}: autoscale must be an AutoscalePolicy or a seed-000 autoScale "
                "mapping"
            )
        config = QueueConfig(name, concurrency, prio, coerce_retry(retry), dead_letter, scaling)
        self.queues[name] = config
        return config

    def _declare_task_schedule(
        self, name: str, task: Task[Any, Any], schedule: dict[str, Any]
    ) -> None:
        """``@app.task(schedule=...)``: schedules live in :class:`conveyor.Conveyor`."""
        raise ConfigurationError(f"task {name}: schedules need a conveyor.Conveyor app")

    def queue_config(self, name: str) -> QueueConfig:
        config = self.queues.get(name)
        if config is None:  # an undeclared queue: the defaults (made once, on the hot path)
            config = self._undeclared_queues.get(name)
            if config is None:
                config = self._undeclared_queues[name] = QueueConfig(name)
        return config

    def use(self, middleware: Middleware) -> Self:
        """Add app-wide middleware (outermost first)."""
        self.middleware.append(middleware)
        return self

    def on(self, kind: str, listener: Listener) -> Callable[[], None]:
        """Listen for lifecycle events of every task; returns an unsubscribe function."""
        return self.events.on(kind, listener)

    def retry_policy_for(self, task: Task[Any, Any] | None, queue: str) -> RetryPolicy:
        if task is not None and task.config.retry is not None:
            return task.config.retry
        qcfg = self.queues.get(queue)
        if qcfg is not None and qcfg.retry is not None:
            return qcfg.retry
        return self.retry

    # -- backend ------------------------------------------------------------------------------
    async def backend(self) -> Backend:
        """The opened backend client for the running event loop."""
        loop = asyncio.get_running_loop()
        backend = self._backends.get(loop)
        if backend is not None:
            return backend
        pending = self._opening.get(loop)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Backend] = loop.create_future()
        self._opening[loop] = future
        try:
            client = self.factory.create()
            await client.open()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()
            del self._opening[loop]
            raise
        self._backends[loop] = client
        future.set_result(client)
        del self._opening[loop]
        return client

    async def open(self) -> Self:
        """Connect to the store now (instead of at the first call that needs it); returns the
        app, so ``app = await Conveyor(url).open()`` works. ``async with app:`` opens and
        closes around a block. Opening twice is harmless."""
        await self.backend()
        return self

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def open_sync(self) -> Self:
        """Blocking :meth:`open` for synchronous code."""
        self.portal.run(self.backend())
        return self

    def __enter__(self) -> Self:
        """``with app:`` in synchronous code: :meth:`open_sync`, then :meth:`close_sync`."""
        return self.open_sync()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close_sync()

    async def close(self) -> None:
        """Close the backend client of this loop (and of the sync portal). The app stays
        usable: the next call that needs the store connects again."""
        loop = asyncio.get_running_loop()
        backend = self._backends.pop(loop, None)
        if backend is not None:
            await backend.close()
        portal_loop = self.portal.loop
        if portal_loop is not None and portal_loop is not loop:
            portal_backend = self._backends.pop(portal_loop, None)
            if portal_backend is not None:
                asyncio.run_coroutine_threadsafe(portal_backend.close(), portal_loop).result(10)
            self.portal.stop()

    def _close_at_exit(self) -> None:
        try:
            self.close_sync()
        except Exception:  # noqa: BLE001 - best effort while the interpreter shuts down
            pass

    def close_sync(self) -> None:
        """Blocking :meth:`close` for synchronous code."""
        portal_loop = self.portal.loop
        if portal_loop is not None:
            backend = self._backends.pop(portal_loop, None)
            if backend is not None:
                asyncio.run_coroutine_threadsafe(backend.close(), portal_loop).result(10)
        self.portal.stop()

    # -- enqueueing ---------------------------------------------------------------------------
    def build_job(self, spec: JobSpec[Any], options: EnqueueOptions, now: float) -> NewJob:
        """Resolve a call's options against task, queue and app defaults."""
        task = spec.task
        cfg = task.config
        queue = options.queue or cfg.queue or self.default_queue
        retry = self.retry_policy_for(task, queue)
        run_at, delay = options.run_at, None
        if run_at is None and options.delay:
            if self.clock is None:  # the store's clock starts the delay (as for retry delays)
                delay = options.delay
            else:
                run_at = now + options.delay
        start = run_at if run_at is not None else now + (delay or 0.0)
        ttl = options.ttl if options.ttl is not None else cfg.ttl
        args, kwargs = task.encode_arguments(
            spec.args, spec.kwargs, validate=options.validate is not False
        )
        return NewJob(
            id=options.job_id or new_job_id(),
            task=task.name,
            queue=queue,
            payload=encode_call(self.serializer, tuple(args), kwargs, task.positional_names),
            payload_version=cfg.versions.version,
            priority=options.priority if options.priority is not None else cfg.priority,
            run_at=run_at,
            max_attempts=options.max_attempts or retry.attempts,
            timeout=options.timeout
            if options.timeout is not None
            else (cfg.timeout or self.timeout),
            expires_at=None if ttl is None else max(start, now) + ttl,
            idempotency_key=options.idempotency_key,
            trace_id=options.trace_id,
            metadata={**cfg.metadata, **options.metadata},
            delay=delay,
        )

    async def enqueue_many(self, specs: Sequence[JobSpec[Any]]) -> list[JobHandle[Any]]:
        """Enqueue many calls in one round trip (``[task.call(...), ...]``)."""
        items = spec_list(specs)
        if not items:
            return []
        calls = [EnqueueCall(s.task.name, tuple(s.args), dict(s.kwargs), s.options) for s in items]
        by_name = {s.task.name: s.task for s in items}

        async def store(final: list[EnqueueCall]) -> list[JobHandle[Any]]:
            now = self.now()
            jobs = [
                self.build_job(
                    JobSpec(by_name[c.task], c.args, c.kwargs, c.options), c.options, now
                )
                for c in final
            ]
            connection = final[0].options.connection if final else None
            backend = await self.backend()
            if connection is not None:
                if not isinstance(backend, Transactions):
                    raise self._no_transactions()
                results = await backend.enqueue_on(connection, jobs, self.backend_now())
            else:
                results = await backend.enqueue(jobs, self.backend_now())
            handles: list[JobHandle[Any]] = []
            for job, res in zip(jobs, results, strict=True):
                decode = by_name[job.task].decode_result
                handles.append(
                    JobHandle(self, res.id, job.task, created=res.created, decode=decode)
                )
                if res.created and self.events.has_listeners("enqueued", job.task):
                    await self.events.emit(
                        JobEvent(
                            "enqueued", res.id, job.task, job.queue, at=now, trace_id=job.trace_id
                        )
                    )
            return handles

        chain = compose_enqueue(self.middleware, store)
        return await chain(calls)

    def enqueue_many_sync(self, specs: Sequence[JobSpec[Any]]) -> list[JobHandle[Any]]:
        """Blocking :meth:`enqueue_many`."""
        return self.portal.run(self.enqueue_many(specs))

    def enqueue_on_connection_sync(
        self, connection: Any, specs: Sequence[JobSpec[Any]]
    ) -> list[JobHandle[Any]]:
        """Enqueue inside a synchronous DB connection's open transaction (outbox pattern)."""
        if not isinstance(self.factory, SyncTransactions):
            raise self._no_transactions()
        now = self.now()
        items = spec_list(specs)
        jobs = [self.build_job(s, s.options, now) for s in items]
        results = self.factory.enqueue_on_sync(connection, jobs, self.backend_now())
        return [
            JobHandle(self, r.id, j.task, created=r.created, decode=s.task.decode_result)
            for s, j, r in zip(items, jobs, results, strict=True)
        ]

    def _no_transactions(self) -> ConfigurationError:
        return ConfigurationError(
            f"enqueue with connection= needs a SQL backend that supports transactions; "
            f"{self.factory.describe()['url']} does not"
        )

    # -- operating ----------------------------------------------------------------------------
    async def cancel(self, job_id: str, reason: str | None = None) -> CancelOutcome:
        """Cancel a job by id (see :meth:`JobHandle.cancel`)."""
        backend = await self.backend()
        return await backend.cancel(job_id, reason, self.backend_now())

    def handle(self, job_id: str) -> JobHandle[Any]:
        """A handle for an existing job id."""
        return JobHandle(self, job_id, "")

    async def migrate(self) -> list[str]:
        """Create or upgrade the store's schema (``conveyor db migrate``)."""
        return await self.factory.migrate()

    async def reset(self) -> list[str]:
        """Wipe the store: every job, idempotency key, worker entry and schedule state is
        deleted, and the schema is left ready for use (``conveyor db reset --yes``).

        For tests and benchmarks. Stop the workers first: a job they hold is gone. Returns the
        migration steps applied afterwards (none when the schema was kept).
        """
        loop = asyncio.get_running_loop()
        backend = self._backends.pop(loop, None)
        if backend is not None:
            await backend.close()
        return await self.factory.reset()

    # -- blocking twins (same arguments and results) -------------------------------------------
    # ``backend()`` has none: a backend client belongs to the event loop that opened it.
    cancel_sync = blocking(cancel)
    migrate_sync = blocking(migrate)
    reset_sync = blocking(reset)
