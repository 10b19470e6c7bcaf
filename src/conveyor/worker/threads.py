"""A small pool of daemon threads for sync handlers.

Daemon threads, unlike ``concurrent.futures.ThreadPoolExecutor``'s, never block interpreter
exit: a handler stuck in a thread cannot keep a stopped worker alive (its job was handed back
or failed already).
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any

_Item = tuple[Callable[[], Any], asyncio.AbstractEventLoop, asyncio.Future[Any]] | None


class DaemonThreadPool:
    """Runs callables in up to ``size`` daemon threads; results arrive as asyncio futures."""

    def __init__(self, size: int, name: str = "conveyor-sync") -> None:
        self._size = max(1, size)
        self._name = name
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._pending = 0
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run ``fn(*args)`` in a pool thread with the caller's contextvars."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        ctx = contextvars.copy_context()
        self._queue.put((lambda: ctx.run(fn, *args), loop, future))
        with self._lock:
            self._pending += 1
            if self._pending > len(self._threads) and len(self._threads) < self._size:
                thread = threading.Thread(
                    target=self._run, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
        return future

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            call, loop, future = item
            try:
                result = call()
            except BaseException as exc:  # noqa: BLE001 - delivered to the awaiting coroutine
                self._deliver(loop, future, None, exc)
            else:
                self._deliver(loop, future, result, None)
            with self._lock:
                self._pending -= 1

    @staticmethod
    def _deliver(
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Any],
        result: Any,
        exc: BaseException | None,
    ) -> None:
        def settle() -> None:
            if future.done():
                return
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(result)

        try:
            loop.call_soon_threadsafe(settle)
        except RuntimeError:
            pass  # the loop is closed: nobody waits any more

    def shutdown(self) -> None:
        """Ask idle threads to exit (busy ones finish their call first; none is joined)."""
        for _ in self._threads:
            self._queue.put(None)
