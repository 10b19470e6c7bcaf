"""Process-mode tasks: CPU-bound handlers run in child processes that can be killed.

Each child imports the task's module by name, runs one call at a time and sends back the result
(or the error, or a retry request). On timeout or cancellation the child is killed with SIGKILL
and replaced on next use; a child that dies on its own (out of memory, a segfault) fails the
attempt with :class:`ChildProcessDied` and the pool carries on.
"""

from __future__ import annotations

import asyncio
import importlib
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

from conveyor.core.context import JobContext, reset_current, set_current
from conveyor.errors import ErrorCode, Retry


def _snapshot(ctx: JobContext | None) -> dict[str, Any]:
    """The picklable fields of a job context, for the child's ``current_job()``."""
    if ctx is None:
        return {
            "job_id": "",
            "task": "",
            "queue": "",
            "attempt": 0,
            "max_attempts": 0,
            "trace_id": None,
            "idempotency_key": None,
            "metadata": {},
            "worker_id": "",
            "enqueued_at": 0.0,
        }
    return {
        "job_id": ctx.job_id,
        "task": ctx.task,
        "queue": ctx.queue,
        "attempt": ctx.attempt,
        "max_attempts": ctx.max_attempts,
        "trace_id": ctx.trace_id,
        "idempotency_key": ctx.idempotency_key,
        "metadata": dict(ctx.metadata),
        "worker_id": ctx.worker_id,
        "enqueued_at": ctx.enqueued_at,
        "fence": ctx.fence,
        "payload_version": ctx.payload_version,
    }


class ChildProcessDied(Exception):
    """The child running a process-mode job exited without answering (killed, OOM, crash)."""

    failure_code = ErrorCode.PROCESS_DIED


class RemoteError(Exception):
    """An exception raised inside a child process, carried back by type name and traceback."""

    def __init__(self, type_name: str, message: str, tb: str) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.remote_traceback = tb
        # how the failure is recorded (see conveyor.domain.failure.classify)
        self.failure_type = type_name
        self.failure_traceback = tb


def _resolve(module: str, qualname: str) -> Any:
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return getattr(target, "fn", target)


def _die_with_parent(parent_pid: int) -> None:
    """Make sure this child never outlives its worker (even after a ``kill -9``).

    On Linux the kernel delivers SIGKILL when the parent dies (``PR_SET_PDEATHSIG``); elsewhere
    a daemon thread notices the re-parenting and exits.
    """
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:
        os._exit(1)  # the parent died before the signal was armed

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="conveyor-parent-watch", daemon=True).start()


def _child_main(conn: Connection, paths: list[str], parent_pid: int) -> None:
    _die_with_parent(parent_pid)
    sys.path[:0] = [p for p in paths if p not in sys.path]
    while True:
        try:
            message = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        module, qualname, args, kwargs, snapshot = message
        ctx = JobContext(**snapshot)
        token = set_current(ctx)
        try:
            fn = _resolve(module, qualname)
            result = fn(*args, **kwargs)
        except Retry as exc:
            conn.send(("retry", exc.reason, exc.delay, ctx._take_logs()))
        except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
            conn.send(
                ("error", type(exc).__name__, str(exc), traceback.format_exc(), ctx._take_logs())
            )
        else:
            logs = ctx._take_logs()
            try:
                conn.send(("ok", result, logs))
            except Exception as exc:  # noqa: BLE001 - an unpicklable result
                conn.send(
                    ("error", type(exc).__name__, f"result cannot be sent back: {exc}", "", logs)
                )
        finally:
            reset_current(token)


class _Child:
    def __init__(self, ctx: multiprocessing.context.BaseContext) -> None:
        parent, child = ctx.Pipe()
        self.conn = parent
        self.process = ctx.Process(  # type: ignore[attr-defined]
            target=_child_main,
            args=(child, list(sys.path), os.getpid()),
            daemon=True,
            name="conveyor-proc",
        )
        self.process.start()
        child.close()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


class ProcessPool:
    """Up to ``size`` child processes, started on demand, one call each at a time."""

    def __init__(self, size: int | None = None, start_method: str = "spawn") -> None:
        self._size = max(1, size or os.cpu_count() or 1)
        self._ctx = multiprocessing.get_context(start_method)
        self._idle: list[_Child] = []
        self._count = 0
        self._available: asyncio.Condition | None = None

    async def _acquire(self) -> _Child:
        if self._available is None:
            self._available = asyncio.Condition()
        async with self._available:
            while not self._idle and self._count >= self._size:
                await self._available.wait()
            if self._idle:
                child = self._idle.pop()
                if child.process.is_alive():
                    return child
                child.kill()
                self._count -= 1
            self._count += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(None, _Child, self._ctx)
        except BaseException:
            await self._forget()
            raise

    async def _forget(self) -> None:
        assert self._available is not None
        async with self._available:
            self._count -= 1
            self._available.notify()

    async def _give_back(self, child: _Child) -> None:
        assert self._available is not None
        async with self._available:
            self._idle.append(child)
            self._available.notify()

    async def call(
        self,
        module: str,
        qualname: str,
        args: list[Any],
        kwargs: dict[str, Any],
        ctx: JobContext | None = None,
    ) -> Any:
        """Run ``module.qualname(*args, **kwargs)`` in a child; cancelling kills the child.

        The child sees a copy of ``ctx`` through ``current_job()`` (ids, attempt, trace id,
        metadata); lines it logs come back into ``ctx``; progress is not shipped.
        """
        child = await self._acquire()
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Any] = loop.create_future()

        def readable() -> None:
            if reply.done():
                return
            try:
                reply.set_result(child.conn.recv())
            except (EOFError, OSError) as exc:
                reply.set_exception(ChildProcessDied(f"child process exited: {exc!r}"))

        fd = child.conn.fileno()
        try:
            child.conn.send((module, qualname, args, kwargs, _snapshot(ctx)))
            loop.add_reader(fd, readable)
            try:
                message = await reply
            finally:
                loop.remove_reader(fd)
        except BaseException:
            child.kill()
            await self._forget()
            if not child.process.is_alive() and child.process.exitcode not in (None, 0, -9):
                raise ChildProcessDied(
                    f"child process exited with code {child.process.exitcode}"
                ) from None
            raise
        await self._give_back(child)
        kind = message[0]
        if ctx is not None and message[-1]:
            with ctx._log_lock:
                ctx._pending_logs.extend(message[-1])
        if kind == "ok":
            return message[1]
        if kind == "retry":
            raise Retry(message[1], delay=message[2])
        raise RemoteError(message[1], message[2], message[3])

    def shutdown(self) -> None:
        """Kill every idle child."""
        for child in self._idle:
            child.kill()
        self._idle.clear()
