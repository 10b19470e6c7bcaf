"""Contracts: a task's name, argument types, result type and settings, without its code.

A producer service enqueues typed jobs of a task it cannot import (the handler needs the
worker's heavy dependencies), and the worker implements the same contract::

    # contracts.py — shared by both sides; imports only conveyor and the models
    from conveyor import contract

    @contract(name="images.resize", queue="images", version=2)
    def resize(image: ImageRef, width: int) -> Thumbnail: ...

    # producer
    resize_task = app.contract(resize)             # a Task without an implementation
    await resize_task.enqueue(ImageRef(url=...), 320)

    # worker
    @app.implement(resize)
    def resize_image(image: ImageRef, width: int) -> Thumbnail:
        ...

The implementation must take the same parameters (names, kinds, annotations, which have
defaults) and return the same type: a mismatch is a :class:`ConfigurationError` when the worker
module is imported. A worker refuses to start while a contract it would run has no
implementation. ``app.contract(...)`` also works as a decorator on the stub itself.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, ParamSpec, TypeVar

from conveyor.core.middleware import Middleware
from conveyor.core.options import Executor, coerce_retry
from conveyor.core.task import Task, TaskConfig, TaskHost
from conveyor.core.versions import Migration, PayloadVersions
from conveyor.domain.durations import Duration, optional_duration
from conveyor.domain.priority import parse_priority
from conveyor.domain.retry import RetryPolicy
from conveyor.errors import ConfigurationError, InvalidArgumentsError

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class TaskContract(Generic[P, R]):
    """A declared task without its implementation (see the module docstring)."""

    stub: Callable[P, R]
    name: str
    queue: str | None = None
    priority: int = 0
    retry: RetryPolicy | None = None
    timeout: float | None = None
    ttl: float | None = None
    version: int = 1
    validate: bool | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def config(
        self,
        *,
        executor: Executor = "async",
        concurrency: int | None = None,
        middleware: Sequence[Middleware] = (),
        since: int | None = None,
        migrate: Mapping[int, Migration] | None = None,
        on_cancel: Callable[..., Any] | None = None,
    ) -> TaskConfig:
        """The task settings of this contract (plus what only an implementation says)."""
        return TaskConfig(
            name=self.name,
            queue=self.queue,
            priority=self.priority,
            retry=self.retry,
            timeout=self.timeout,
            concurrency=concurrency,
            ttl=self.ttl,
            executor=executor,
            metadata=dict(self.metadata),
            middleware=tuple(middleware),
            validate=self.validate,
            versions=PayloadVersions.build(self.name, self.version, since, migrate),
            on_cancel=on_cancel,
        )


def contract(
    *,
    name: str,
    queue: str | None = None,
    priority: int | str = 0,
    retry: RetryPolicy | int | None = None,
    timeout: Duration | None = None,
    ttl: Duration | None = None,
    version: int = 1,
    validate: bool | None = None,
    metadata: dict[str, Any] | None = None,
) -> Callable[[Callable[P, R]], TaskContract[P, R]]:
    """Declare a contract from a stub function (its body is never run): its signature and
    annotations are the task's arguments and result. ``name`` is required, so both sides agree
    on it whatever module the stub lives in."""

    def declare(stub: Callable[P, R]) -> TaskContract[P, R]:
        try:
            PayloadVersions.build(name, version, None, None)
            return TaskContract(
                stub=stub,
                name=name,
                queue=queue,
                priority=parse_priority(priority),
                retry=coerce_retry(retry),
                timeout=optional_duration(timeout, field="timeout"),
                ttl=optional_duration(ttl, field="ttl"),
                version=version,
                validate=validate,
                metadata=dict(metadata or {}),
            )
        except (ValueError, InvalidArgumentsError) as exc:
            raise ConfigurationError(f"contract {name}: {exc}") from None

    return declare


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable names: compare the annotation text
        return dict(inspect.get_annotations(fn))


def mismatches(contract_fn: Callable[..., Any], impl: Callable[..., Any]) -> list[str]:
    """How ``impl``'s signature differs from the contract's (empty when it matches)."""
    want, got = inspect.signature(contract_fn), inspect.signature(impl)
    want_hints, got_hints = _hints(contract_fn), _hints(impl)
    problems: list[str] = []
    wanted = list(want.parameters.values())
    given = list(got.parameters.values())
    if [p.name for p in wanted] != [p.name for p in given]:
        problems.append(
            f"parameters are ({', '.join(p.name for p in given)}), the contract has "
            f"({', '.join(p.name for p in wanted)})"
        )
    for w, g in zip(wanted, given, strict=False):
        if w.name != g.name:
            continue
        if w.kind != g.kind:
            problems.append(
                f"parameter {w.name!r} is {g.kind.description}, not {w.kind.description}"
            )
        if (w.default is w.empty) != (g.default is g.empty):
            problems.append(
                f"parameter {w.name!r} has a default the contract does not"
                if g.default is not g.empty
                else f"parameter {w.name!r} lacks the contract's default"
            )
        if w.name in want_hints and want_hints.get(w.name) != got_hints.get(w.name):
            problems.append(
                f"parameter {w.name!r} is annotated {got_hints.get(w.name, 'nothing')!r}, "
                f"the contract says {want_hints[w.name]!r}"
            )
    if "return" in want_hints and want_hints["return"] != got_hints.get("return"):
        problems.append(
            f"it returns {got_hints.get('return', 'nothing')!r}, the contract says "
            f"{want_hints['return']!r}"
        )
    return problems


def register(
    host: TaskHost, tasks: dict[str, Task[Any, Any]], spec: TaskContract[P, R]
) -> Task[P, R]:
    """``app.contract(spec)``: the app's task for ``spec``, without an implementation unless
    one is declared already (idempotent by name)."""
    existing = tasks.get(spec.name)
    if existing is not None:
        return existing  # registered or implemented already: the same task
    task: Task[P, R] = Task(host, spec.stub, spec.config())
    task.implemented = False
    task.contract = spec
    tasks[spec.name] = task
    return task


def implement(
    host: TaskHost,
    tasks: dict[str, Task[Any, Any]],
    spec: TaskContract[P, R],
    fn: Callable[P, R],
    *,
    executor: Executor | None = None,
    concurrency: int | None = None,
    middleware: Sequence[Middleware] = (),
    since: int | None = None,
    migrate: Mapping[int, Migration] | None = None,
    on_cancel: Callable[..., Any] | None = None,
) -> Task[P, R]:
    """``app.implement(spec)(fn)``: check ``fn`` against the contract, then make it the task's
    handler (upgrading a task registered by :func:`register` in place)."""
    problems = mismatches(spec.stub, fn)
    if problems:
        raise ConfigurationError(
            f"task {spec.name}: {fn.__qualname__} does not match its contract: "
            + "; ".join(problems)
        )
    is_async = inspect.iscoroutinefunction(fn)
    chosen: Executor = executor or ("async" if is_async else "thread")
    if chosen == "async" and not is_async:
        raise ConfigurationError(f"task {spec.name}: executor='async' needs an async def function")
    if chosen == "process" and is_async:
        raise ConfigurationError(f"task {spec.name}: executor='process' needs a plain function")
    config = spec.config(
        executor=chosen,
        concurrency=concurrency,
        middleware=middleware,
        since=since,
        migrate=migrate,
        on_cancel=on_cancel,
    )
    existing = tasks.get(spec.name)
    if existing is not None and existing.implemented:
        raise ConfigurationError(f"task {spec.name} is already implemented in this app")
    if existing is not None:
        existing.bind_implementation(fn, config)
        return existing
    task: Task[P, R] = Task(host, fn, config)
    task.contract = spec
    tasks[spec.name] = task
    return task


def unimplemented(
    tasks: Mapping[str, Task[Any, Any]],
    queues: Sequence[str],
    default_queue: str,
    accepts: Callable[[str], bool],
) -> list[str]:
    """Contracts a worker consuming ``queues`` (and accepting task names ``accepts`` says yes
    to) would run but has no implementation for."""
    return sorted(
        name
        for name, task in tasks.items()
        if not task.implemented and (task.config.queue or default_queue) in queues and accepts(name)
    )
