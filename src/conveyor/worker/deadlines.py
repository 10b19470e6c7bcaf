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
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

#: How long a call past its deadline may still take to read a reply that is already buffered.
SETTLE = 0.05


async def within(timeout: float, call: Awaitable[T]) -> T:
    """Await ``call`` for up to ``timeout`` seconds; raise ``TimeoutError`` after that, unless
    its reply is already waiting to be read (see the module docstring).

    Two timers instead of one: when the deadline passes, the first only arms the second,
    ``SETTLE`` later, so the task step that reads a reply the loop has just received runs
    first. No task per call (this wraps every job's outcome write)."""
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
