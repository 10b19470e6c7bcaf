"""A background event loop that runs the async core for synchronous callers.

Sync callers (a Django view, a script, a sync handler) call ``task.enqueue_sync(...)``; the call
is submitted to this loop and the caller blocks on the result. One portal per App, started on
first use, so connections are reused across calls.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from conveyor.errors import ConfigurationError

T = TypeVar("T")


class Portal:
    """A daemon thread running an event loop forever."""

    def __init__(
        self, name: str = "conveyor-portal", on_exit: Callable[[], None] | None = None
    ) -> None:
        self._name = name
        self._on_exit = on_exit
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is not None:
                return self._loop
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            self._thread = threading.Thread(target=run, name=self._name, daemon=True)
            self._thread.start()
            ready.wait()
            self._loop = loop
            if self._on_exit is not None:
                # Close the portal's connections when the interpreter exits, so sync scripts
                # that never call close_sync() do not leave pools half shut.
                atexit.register(self._on_exit)
            return loop

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the portal loop and wait for its result."""
        loop = self._start()
        if threading.current_thread() is self._thread:
            coro.close()
            raise ConfigurationError(
                "a *_sync method was called from inside Conveyor's own event loop; "
                "use the async method (await ...) there"
            )
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        return future.result(timeout)

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop

    def stop(self) -> None:
        """Stop the loop and join the thread (idempotent)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        if not loop.is_running():
            loop.close()
