"""Soft time limits: :class:`~conveyor.errors.SoftTimeLimitExceeded` raised *inside* a running
handler some time before its hard timeout, so it can clean up, save partial work or return
early (Celery's ``soft_time_limit``).

How it is delivered depends on where the handler runs:

* async handlers: the job's task is cancelled and :class:`SoftLimited`, which sits between the
  task and the handler's coroutine, turns that cancellation into the exception, thrown into the
  coroutine at the ``await`` it is suspended on (the task's cancellation is withdrawn);
* thread handlers: :func:`raise_in_thread` asks the interpreter to raise it in the handler's
  thread at its next bytecode (a thread blocked in a C call, such as a sleep or a socket read,
  sees it when the call returns);
* process handlers: the child gets ``SIGUSR1`` and its handler raises it (see
  :mod:`conveyor.worker.processes`).
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
from collections.abc import Coroutine, Generator
from typing import Any

from conveyor.errors import SoftTimeLimitExceeded


class SoftFlag:
    """Per job: whether the soft limit fired and is still to be delivered."""

    __slots__ = ("inside", "pending", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.pending = False
        #: Whether the handler's coroutine runs inside :class:`SoftLimited` now (only then may
        #: the task be cancelled for the soft limit: middleware around it never sees it).
        self.inside = False

    def exception(self) -> SoftTimeLimitExceeded:
        return SoftTimeLimitExceeded(f"soft time limit of {self.seconds:g}s exceeded")


class SoftLimited:
    """Awaits a handler's coroutine; a cancellation of the task while :attr:`flag` is pending
    is delivered to the coroutine as :class:`SoftTimeLimitExceeded` instead."""

    def __init__(self, coro: Coroutine[Any, Any, Any], flag: SoftFlag) -> None:
        self.coro = coro
        self.flag = flag

    def __await__(self) -> Generator[Any, Any, Any]:
        self.flag.inside = True
        try:
            return (yield from self._drive())
        finally:
            self.flag.inside = False

    def _drive(self) -> Generator[Any, Any, Any]:
        inner = self.coro.__await__()
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            try:
                if thrown is not None:
                    exc, thrown = thrown, None
                    yielded = inner.throw(exc)
                else:
                    yielded = inner.send(sent)
            except StopIteration as stop:
                return stop.value
            try:
                sent = yield yielded
            except asyncio.CancelledError as exc:
                if self.flag.pending:
                    self.flag.pending = False
                    task = asyncio.current_task()
                    if task is not None:
                        task.uncancel()  # ours: consumed here, delivered as the soft limit
                    thrown = self.flag.exception()
                else:
                    thrown = exc
            except BaseException as exc:  # noqa: BLE001 - everything else goes in unchanged
                thrown = exc


class ThreadTarget:
    """The thread a sync handler runs in, while it runs (so the soft limit can reach it)."""

    __slots__ = ("ident", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ident: int | None = None

    def enter(self) -> None:
        with self.lock:
            self.ident = threading.get_ident()

    def leave(self) -> None:
        with self.lock:
            self.ident = None


def raise_in_thread(target: ThreadTarget, flag: SoftFlag) -> bool:
    """Raise the soft limit in the handler's thread if it still runs the handler."""
    with target.lock:
        if target.ident is None:
            return False
        done = ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(target.ident), ctypes.py_object(SoftTimeLimitExceeded)
        )
    return bool(done == 1)
