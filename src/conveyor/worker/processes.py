"""Process-mode tasks: CPU-bound handlers run in child processes that can be killed.

Each child imports the task's module by name, runs one call at a time and sends back the result
(or the error, or a retry request); progress the handler reports on the way
(``current_job().progress(...)``) is sent as it happens. On timeout or cancellation the child is
killed with SIGKILL and replaced on next use; a child that dies on its own (out of memory, a
segfault) fails the attempt with :class:`ChildProcessDied` and the pool carries on.

Recycling: a child is retired (and a fresh one started on next use) after ``max_jobs_per_child``
calls, or when its resident memory after a call is above ``max_memory_per_child`` bytes — a
leaking library cannot grow a long-lived worker without bound. A soft time limit reaches the
child as ``SIGUSR1``, raised there as :class:`~conveyor.errors.SoftTimeLimitExceeded`.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import multiprocessing
import os
import resource
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

from conveyor.core.context import JobContext, reset_current, set_current
from conveyor.errors import ConveyorError, ErrorCode, Retry, SoftTimeLimitExceeded

log = logging.getLogger("conveyor.worker")


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


def _resident_bytes() -> int:
    """This process's resident memory now (Linux ``/proc``), else its peak (``getrusage``)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak) * (1 if sys.platform == "darwin" else 1024)


class _ChildHost:
    """The job context's host inside a child: progress goes to the parent over the pipe."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()

    def report_progress(self, ctx: JobContext, value: Any) -> None:
        with self.lock:
            self.conn.send(("progress", value))

    async def heartbeat_now(self, ctx: JobContext) -> bool:
        return True  # the worker's heartbeats hold the lease

    def is_shutting_down(self) -> bool:
        return False

    async def open_transaction(self, ctx: JobContext) -> Any:
        raise ConveyorError("current_job().transaction() is not available in process mode")


_RUNNING = False  # in a child: whether a handler runs now (the soft limit may interrupt it)


def _soft_limit(signum: int, frame: Any) -> None:
    if _RUNNING:
        raise SoftTimeLimitExceeded("soft time limit exceeded")


def _child_main(conn: Connection, paths: list[str], parent_pid: int) -> None:
    global _RUNNING
    _die_with_parent(parent_pid)
    sys.path[:0] = [p for p in paths if p not in sys.path]
    host = _ChildHost(conn)
    signal.signal(signal.SIGUSR1, _soft_limit)
    conn.send(("ready",))  # the parent sends work (and signals) only after this
    while True:
        try:
            message = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        module, qualname, args, kwargs, snapshot = message
        ctx = JobContext(**snapshot, _host=host)
        token = set_current(ctx)
        reply: tuple[Any, ...]
        try:
            fn = _resolve(module, qualname)
            _RUNNING = True
            try:
                result = fn(*args, **kwargs)
            finally:
                _RUNNING = False
        except Retry as exc:
            reply = ("retry", exc.reason, exc.delay)
        except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
            reply = ("error", type(exc).__name__, str(exc), traceback.format_exc())
        else:
            reply = ("ok", result)
        finally:
            reset_current(token)
        logs = ctx._take_logs()
        with host.lock:
            try:
                conn.send((*reply, logs, _resident_bytes()))
            except Exception as exc:  # noqa: BLE001 - an unpicklable result
                text = f"result cannot be sent back: {exc}"
                conn.send(("error", type(exc).__name__, text, "", logs, _resident_bytes()))


class _Child:
    jobs = 0  # calls answered so far

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
        # Wait for the child to be ready (its signal handlers installed): a soft-limit signal
        # that arrived while it was still starting would kill it.
        try:
            ready = self.conn.poll(60) and self.conn.recv() == ("ready",)
        except (EOFError, OSError):
            ready = False
        if not ready:
            self.kill()
            raise ChildProcessDied(
                f"child process did not start (exit code {self.process.exitcode})"
            )

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()

    def retire(self) -> None:
        """Let the child exit on its own (end of its input), killing it if it lingers."""
        self.conn.close()
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)


def _signal(child: _Child, signum: int) -> None:
    pid = child.process.pid
    if pid is not None and child.process.is_alive():
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


class ProcessPool:
    """Up to ``size`` child processes, started on demand, one call each at a time; a child is
    recycled after ``max_jobs_per_child`` calls or above ``max_memory_per_child`` bytes."""

    def __init__(
        self,
        size: int | None = None,
        start_method: str = "spawn",
        *,
        max_jobs_per_child: int | None = None,
        max_memory_per_child: int | None = None,
    ) -> None:
        self._size = max(1, size or os.cpu_count() or 1)
        self._ctx = multiprocessing.get_context(start_method)
        self._idle: list[_Child] = []
        self._count = 0
        self._available: asyncio.Condition | None = None
        self.max_jobs_per_child = max_jobs_per_child
        self.max_memory_per_child = max_memory_per_child
        #: Children retired by the recycling limits (for stats and tests).
        self.recycled = 0

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
        *,
        soft_timeout: float | None = None,
    ) -> Any:
        """Run ``module.qualname(*args, **kwargs)`` in a child; cancelling kills the child.

        The child sees a copy of ``ctx`` through ``current_job()`` (ids, attempt, trace id,
        metadata); lines it logs come back into ``ctx``, progress it reports goes to
        ``ctx.progress`` as it happens. ``soft_timeout``: seconds after which the child gets
        ``SIGUSR1`` (raised in the handler as ``SoftTimeLimitExceeded``).
        """
        child = await self._acquire()
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Any] = loop.create_future()

        def readable() -> None:
            if reply.done():
                return
            try:
                message = child.conn.recv()
            except (EOFError, OSError) as exc:
                reply.set_exception(ChildProcessDied(f"child process exited: {exc!r}"))
                return
            if message[0] == "progress":
                if ctx is not None:
                    ctx.progress(message[1])
                return  # the answer is still to come (the reader fires again)
            reply.set_result(message)

        fd = child.conn.fileno()
        timer: asyncio.TimerHandle | None = None
        try:
            child.conn.send((module, qualname, args, kwargs, _snapshot(ctx)))
            loop.add_reader(fd, readable)
            if soft_timeout is not None:
                timer = loop.call_later(soft_timeout, _signal, child, signal.SIGUSR1)
            try:
                message = await reply
            finally:
                loop.remove_reader(fd)
                if timer is not None:
                    timer.cancel()
        except BaseException:
            child.kill()
            await self._forget()
            if not child.process.is_alive() and child.process.exitcode not in (None, 0, -9):
                raise ChildProcessDied(
                    f"child process exited with code {child.process.exitcode}"
                ) from None
            raise
        *answer, logs, resident = message
        child.jobs += 1
        await self._recycle_or_give_back(child, resident)
        kind = answer[0]
        if ctx is not None and logs:
            with ctx._log_lock:
                ctx._pending_logs.extend(logs)
        if kind == "ok":
            return answer[1]
        if kind == "retry":
            raise Retry(answer[1], delay=answer[2])
        if answer[1] == "SoftTimeLimitExceeded":
            exc = SoftTimeLimitExceeded(answer[2])
            exc.failure_traceback = answer[3]  # type: ignore[attr-defined]
            raise exc
        raise RemoteError(answer[1], answer[2], answer[3])

    async def _recycle_or_give_back(self, child: _Child, resident: int) -> None:
        """Back to the idle list, or retired when a recycling limit says so."""
        reason = None
        if self.max_jobs_per_child is not None and child.jobs >= self.max_jobs_per_child:
            reason = f"after {child.jobs} job(s)"
        elif self.max_memory_per_child is not None and resident > self.max_memory_per_child:
            limit = self.max_memory_per_child / 2**20
            reason = f"at {resident / 2**20:.0f} MiB resident (limit {limit:.0f} MiB)"
        if reason is None:
            await self._give_back(child)
            return
        self.recycled += 1
        log.info("recycling process-mode child pid %d %s", child.process.pid, reason)
        await asyncio.get_running_loop().run_in_executor(None, child.retire)
        await self._forget()

    def shutdown(self) -> None:
        """Kill every idle child."""
        for child in self._idle:
            child.kill()
        self._idle.clear()
