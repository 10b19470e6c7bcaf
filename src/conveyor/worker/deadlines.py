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
from typing import Any, TypeVar

T = TypeVar("T")

#: How long a call past its deadline may still take to read a reply that is already buffered.
SETTLE = 0.05


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def within(timeout: float, call: Awaitable[T]) -> T:
    """Await ``call`` for up to ``timeout`` seconds; raise ``TimeoutError`` after that, unless
    its reply is already waiting to be read (see the module docstring)."""
    task = asyncio.ensure_future(call)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            await asyncio.wait({task}, timeout=SETTLE)
        if not task.done():
            raise TimeoutError
        return task.result()
    finally:
        if not task.done():
            # Not awaited: a client that swallows the cancellation must not hold us up.
            task.cancel()
            task.add_done_callback(_consume)
