"""Middleware: onion-ordered hooks around enqueue and around execution.

Subclass :class:`Middleware` and override either method; register with ``app.use(mw)`` (app-wide,
outermost first) or ``@app.task(middleware=[...])`` (inside the app-wide ones). Each hook
receives a ``call_next`` to continue the chain; code after ``await call_next(...)`` runs in
reverse order. A middleware may change the arguments before ``call_next``, change or replace the
result after it, catch and re-raise, or skip ``call_next`` to short-circuit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from conveyor.core.options import EnqueueOptions

if TYPE_CHECKING:
    from conveyor.core.context import JobContext
    from conveyor.core.handle import JobHandle


@dataclass(slots=True)
class EnqueueCall:
    """One job about to be enqueued; middleware may edit ``args``, ``kwargs`` and ``options``
    (e.g. ``call.options = dataclasses.replace(call.options, trace_id=...)``)."""

    task: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: EnqueueOptions


@dataclass(slots=True)
class ExecuteCall:
    """One attempt about to run; middleware may edit ``args``/``kwargs`` and see ``ctx``."""

    ctx: JobContext
    args: list[Any]
    kwargs: dict[str, Any]


EnqueueNext = Callable[[list[EnqueueCall]], Awaitable["list[JobHandle[Any]]"]]
ExecuteNext = Callable[[ExecuteCall], Awaitable[Any]]


class Middleware:
    """Base class; both hooks pass straight through by default."""

    async def enqueue(
        self, calls: list[EnqueueCall], call_next: EnqueueNext
    ) -> list[JobHandle[Any]]:
        """Wraps one enqueue round trip (a single job or a bulk batch)."""
        return await call_next(calls)

    async def execute(self, call: ExecuteCall, call_next: ExecuteNext) -> Any:
        """Wraps one attempt of one job; returns the (possibly replaced) result."""
        return await call_next(call)


def compose_execute(middlewares: Sequence[Middleware], last: ExecuteNext) -> ExecuteNext:
    """Build the execution chain: ``middlewares[0]`` outermost, ``last`` innermost."""
    chain = last
    for mw in reversed(middlewares):
        if type(mw).execute is Middleware.execute:
            continue

        def link(
            call: ExecuteCall, _mw: Middleware = mw, _next: ExecuteNext = chain
        ) -> Awaitable[Any]:
            return _mw.execute(call, _next)

        chain = link
    return chain


def compose_enqueue(middlewares: Sequence[Middleware], last: EnqueueNext) -> EnqueueNext:
    """Build the enqueue chain: ``middlewares[0]`` outermost, ``last`` innermost."""
    chain = last
    for mw in reversed(middlewares):
        if type(mw).enqueue is Middleware.enqueue:
            continue

        def link(
            calls: list[EnqueueCall], _mw: Middleware = mw, _next: EnqueueNext = chain
        ) -> Awaitable[list[JobHandle[Any]]]:
            return _mw.enqueue(calls, _next)

        chain = link
    return chain
