"""Deadlines on backend calls that survive a stalled event loop.

A handler that blocks the loop (CPU work in an ``async def``) stalls every other task of the
worker. When the loop gets back, asyncio runs the expired deadline of a call in flight before
the task that would read its reply, which is already waiting in the socket buffer, so
``asyncio.timeout`` throws away a reply that arrived in time: a claim's jobs stay leased to
this worker without running until their lease expires (each such stall counts towards the
job's ``max_stalls``), and a heartbeat that did extend every lease reads as failed, which can
make the worker abandon jobs it still holds. :func:`within` lets a call whose reply is already
there finish before it declares the deadline missed.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")

#: How long a call past its deadline may still take to read a reply that is already buffered.
SETTLE = 0.05
#: How often the shared ticker of ``within(..., coarse=True)`` looks at its calls.
TICK = 0.25


async def within(timeout: float, call: Awaitable[T], *, coarse: bool = False) -> T:
    """Await ``call`` for up to ``timeout`` seconds; raise ``TimeoutError`` after that, unless
    its reply is already waiting to be read (see the module docstring).

    Two timers instead of one: when the deadline passes, the first only arms the second,
    ``SETTLE`` later, so the task step that reads a reply the loop has just received runs
    first. No task per call (this wraps every job's outcome write).

    ``coarse=True`` (for long deadlines on hot paths): no timer per call; one ticker per
    event loop checks every coarse call each ``TICK`` seconds, arming a call the first time
    it finds it past its deadline and cancelling it the next, so it times out up to two ticks
    late."""
    if coarse:
        return await within_coarse(timeout, call)
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("within() must be awaited inside a task")
    loop = asyncio.get_running_loop()
    cancelling = task.cancelling()
    expired = False

    def fire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    def settle() -> None:
        timer[0] = loop.call_later(SETTLE, fire)

    timer = [loop.call_later(timeout, settle)]
    try:
        return await call
    except asyncio.CancelledError:
        if expired and task.uncancel() <= cancelling:
            raise TimeoutError from None
        raise
    finally:
        timer[0].cancel()


def within_coarse(timeout: float, call: Awaitable[T]) -> Awaitable[T]:
    """``within(timeout, call, coarse=True)`` without a coroutine of its own (it wraps every
    job's outcome write)."""
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("within() must be awaited inside a task")
    loop = task.get_loop()
    return _ticker(loop).watch(loop.time() + timeout, task, task.cancelling(), call)


class _Ticker:
    """The coarse deadlines of one event loop, checked together every ``TICK`` seconds."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        #: id -> [deadline, task, armed, expired]
        self.calls: dict[int, list[Any]] = {}
        self.handle: asyncio.TimerHandle | None = None

    async def watch(
        self, deadline: float, task: asyncio.Task[Any], cancelling: int, call: Awaitable[T]
    ) -> T:
        entry: list[Any] = [deadline, task, False, False]
        key = id(entry)
        self.calls[key] = entry
        if self.handle is None:
            self.handle = self.loop.call_later(TICK, self.tick)
        try:
            return await call
        except asyncio.CancelledError:
            if entry[3] and task.uncancel() <= cancelling:
                raise TimeoutError from None
            raise
        finally:
            del self.calls[key]

    def tick(self) -> None:
        self.handle = None
        now = self.loop.time()
        for entry in self.calls.values():
            if now < entry[0] or entry[3]:
                continue
            if entry[2]:  # armed a tick ago and still waiting: the deadline has passed
                entry[3] = True
                entry[1].cancel()
            else:
                entry[2] = True
        if self.calls:
            self.handle = self.loop.call_later(TICK, self.tick)


_tickers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Ticker] = (
    weakref.WeakKeyDictionary()
)


_last: _Ticker | None = None


def _ticker(loop: asyncio.AbstractEventLoop) -> _Ticker:
    global _last
    ticker = _last
    if ticker is not None and ticker.loop is loop:
        return ticker
    ticker = _tickers.get(loop)
    if ticker is None:
        ticker = _tickers[loop] = _Ticker(loop)
    _last = ticker
    return ticker
