"""A background event loop that runs the async core for synchronous callers.

Sync callers (a Django view, a script, a sync handler) call ``task.enqueue_sync(...)``; the call
is submitted to this loop and the caller blocks on the result. One portal per App, started on
first use, so connections are reused across calls.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, Generic, ParamSpec, Self, TypeVar, overload

from conveyor.errors import ConfigurationError

T = TypeVar("T")
P = ParamSpec("P")


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


class blocking(Generic[P, T]):
    """The blocking twin of an async method, declared next to it::

        async def jobs(self, ...) -> list[JobInfo]: ...
        jobs_sync = blocking(jobs)

    ``obj.jobs_sync(...)`` takes the same arguments, runs ``obj.jobs(...)`` on the portal of
    ``obj`` (its ``portal`` attribute, else its ``app.portal``) and returns the result; the
    type checker sees the same parameters and the awaited return type.
    """

    def __init__(self, method: Callable[Concatenate[Any, P], Coroutine[Any, Any, T]]) -> None:
        self.method = method
        self.__doc__ = f"Blocking :meth:`{method.__name__}` for synchronous code.\n\n" + (
            method.__doc__ or ""
        )

    @overload
    def __get__(self, obj: None, owner: type[Any] | None = None) -> Self: ...

    @overload
    def __get__(self, obj: object, owner: type[Any] | None = None) -> Callable[P, T]: ...

    def __get__(self, obj: object, owner: type[Any] | None = None) -> Any:
        if obj is None:
            return self
        method = self.method
        portal: Portal = getattr(obj, "portal", None) or obj.app.portal  # type: ignore[attr-defined]

        @functools.wraps(method)
        def call(*args: P.args, **kwargs: P.kwargs) -> T:
            return portal.run(method(obj, *args, **kwargs))

        call.__name__ = f"{method.__name__}_sync"
        call.__doc__ = self.__doc__
        return call
