"""The tasks the reliability suite runs in real worker processes, and the ledger they write.

Worker subprocesses load ``tests.reliability.apps:from_env``; the environment configures them:

``REL_URL`` / ``REL_OPTIONS``  the store URL and JSON ``backend_options`` (schema / prefix)
``REL_LEDGER``                 the ledger file (below)
``REL_LEASE``, ``REL_HEARTBEAT``, ``REL_MAX_STALLS``  lease settings (seconds, count)
``REL_SKEW``                   seconds this process's clock is off by (clock-skew scenario)
``REL_NAMES``                  JSON list: a queue and a task declared under each name
``REL_CLOCK``                  how the skew is applied: ``system`` (default: ``time.time`` itself
                               is shifted in this process, as on a host whose clock is wrong) or
                               ``inject`` (``Conveyor(clock=...)`` with an offset clock)

**The ledger** is the suite's own record of what really happened, independent of the store:
one JSON object per line, each written with a single ``os.write`` on an ``O_APPEND``
descriptor, so lines of concurrent processes never interleave and a line written before a
``kill -9`` survives it. Times are the real wall clock (captured before any skew is applied).

=============== ========================================================================
``start``       a handler began (job, attempt, fence, pid, ``x`` = a token for this run)
``end``         it returned or raised (``outcome``: ok, error, retry, cancelled)
``block``       a handler held the event loop from ``t0`` to ``t1`` (CPU-bound scenario)
``acked``       the worker stored the completion (the ``completed`` event, fired only after a
                fenced completion succeeded); ``x`` names the run whose result was stored
``fail_acked``  the worker stored a failed attempt (``code``, ``will_retry``)
``cancel_acked`` the worker stored a cancellation
``stalled``     this worker recovered an expired lease (``action``)
``ack_lost``    a completion or failure was refused: the lease had moved on (fencing)
``hb_lost``     a heartbeat found the lease gone; the worker abandoned the job
``handed_back`` the job was released at shutdown
=============== ========================================================================
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import os
import resource
import signal
import time
import uuid
from collections.abc import Callable
from typing import Any

from conveyor import Conveyor, JobEvent, JobTimeout, Retry, RetryPolicy, current_job

ENV_URL = "REL_URL"
ENV_OPTIONS = "REL_OPTIONS"
ENV_LEDGER = "REL_LEDGER"
ENV_LEASE = "REL_LEASE"
ENV_HEARTBEAT = "REL_HEARTBEAT"
ENV_MAX_STALLS = "REL_MAX_STALLS"
ENV_SKEW = "REL_SKEW"
ENV_CLOCK = "REL_CLOCK"
ENV_NAMES = "REL_NAMES"

#: Total runs of the always-failing task.
BOOM_ATTEMPTS = 3
BOOM_DELAY = 0.3
#: Total runs allowed to the task that fails its first attempts.
FLAKY_ATTEMPTS = 4
#: The per-attempt timeout of the hanging tasks.
HANG_TIMEOUT = 1.0

_real_time = time.time  # the true wall clock, whatever skew this process is given later


def real_time() -> float:
    return _real_time()


# -- the ledger -----------------------------------------------------------------------------
def _write(line: dict[str, Any]) -> None:
    path = os.environ.get(ENV_LEDGER)
    if not path:
        return
    data = (json.dumps(line, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def record(event: str, **fields: Any) -> None:
    """Append one event to the ledger; job fields come from the running job when there is one."""
    line: dict[str, Any] = {"ev": event, "t": _real_time(), "pid": os.getpid()}
    try:
        ctx = current_job()
    except Exception:  # noqa: BLE001 - outside a job (a process-mode child, a listener)
        ctx = None
    if ctx is not None:
        line.update(job=ctx.job_id, task=ctx.task, attempt=ctx.attempt, fence=ctx.fence)
    line.update(fields)
    _write(line)


def _result(token: str, value: Any) -> dict[str, Any]:
    ctx = current_job()
    return {"x": token, "v": value, "pid": os.getpid(), "attempt": ctx.attempt}


def ledgered(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a handler so each run writes ``start`` and ``end`` and its result names the run."""
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            token = uuid.uuid4().hex[:16]
            record("start", x=token)
            try:
                value = await fn(*args, **kwargs)
            except asyncio.CancelledError:
                record("end", x=token, outcome="cancelled", reason=_cancel_reason())
                raise
            except Retry:
                record("end", x=token, outcome="retry")
                raise
            except BaseException as exc:
                record("end", x=token, outcome="error", error=type(exc).__name__)
                raise
            record("end", x=token, outcome="ok")
            return _result(token, value)

        return run_async

    @functools.wraps(fn)
    def run_sync(*args: Any, **kwargs: Any) -> Any:
        token = uuid.uuid4().hex[:16]
        record("start", x=token)
        try:
            value = fn(*args, **kwargs)
        except Retry:
            record("end", x=token, outcome="retry")
            raise
        except BaseException as exc:
            if type(exc).__name__ == "Cancelled":
                record("end", x=token, outcome="cancelled", reason=_cancel_reason())
            else:
                record("end", x=token, outcome="error", error=type(exc).__name__)
            raise
        record("end", x=token, outcome="ok")
        return _result(token, value)

    return run_sync


def _cancel_reason() -> str | None:
    try:
        ctx = current_job()
    except Exception:  # noqa: BLE001
        return None
    if ctx.is_shutting_down():
        return "shutdown"
    return ctx.cancel_reason


# -- what the worker itself reports ---------------------------------------------------------
def _on_event(event: JobEvent) -> None:
    common = {"job": event.job_id, "attempt": event.attempt, "worker": event.worker_id}
    if event.kind == "completed":
        x = event.result.get("x") if isinstance(event.result, dict) else None
        record("acked", x=x, **common)
    elif event.kind == "failed":
        record("fail_acked", code=event.error_code, will_retry=event.will_retry, **common)
    elif event.kind == "cancelled":
        record("cancel_acked", **common)
    elif event.kind == "stalled":
        record("stalled", action=event.action, stalls=event.extra.get("stalls"), **common)


class _LedgerLogHandler(logging.Handler):
    """Turns the worker's fencing and hand-back log lines into ledger events."""

    MARKERS = (
        ("lease lost before the outcome was stored", "ack_lost"),
        ("lost the lease on job", "hb_lost"),
        ("handed back to the queue at shutdown", "handed_back"),
        ("giving up on a backend write", "write_dropped"),
    )

    def emit(self, rec: logging.LogRecord) -> None:
        template = str(rec.msg)
        for marker, event in self.MARKERS:
            if marker in template:
                _write(
                    {
                        "ev": event,
                        "t": _real_time(),
                        "pid": os.getpid(),
                        "job": getattr(rec, "job_id", None),
                        "attempt": getattr(rec, "attempt", None),
                    }
                )
                return


def _install_observers(app: Conveyor) -> None:
    for kind in ("completed", "failed", "cancelled", "stalled"):
        app.on(kind, _on_event)
    handler = _LedgerLogHandler(logging.INFO)
    for name in ("conveyor.job", "conveyor.worker"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)  # the hand-back line is INFO


# -- clocks ---------------------------------------------------------------------------------
class OffsetClock:
    """The wall clock shifted by ``offset`` seconds (for ``Conveyor(clock=...)``)."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def now(self) -> float:
        return _real_time() + self.offset


def skew_process_clock(offset: float) -> None:
    """Shift ``time.time`` for this whole process, as a host with a wrong clock would see.
    Monotonic clocks (timeouts, intervals) are unaffected, as on a real host."""
    time.time = lambda: _real_time() + offset


# -- process-mode handlers (module level: the child process imports them by name) -----------
def oom(tag: str, limit_mb: int, kill: bool) -> int:
    """Allocate past an address-space limit set here, in the child process only.

    The soft ``RLIMIT_AS`` is lowered to ``limit_mb`` above what the child already maps, so the
    machine is never at risk; a ``MemoryError`` follows. With ``kill`` the child then dies the
    way the kernel's OOM killer would end it (SIGKILL); otherwise the error propagates (after
    the limit is restored, so the pooled child stays usable).
    """
    record("start", job=tag, x=tag, attempt=None)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as status:
        vm = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm * 1024 + limit_mb * 1024 * 1024, hard))
    try:
        hog = [bytearray(16 * 1024 * 1024) for _ in range(limit_mb)]  # 16x the limit
        del hog
    except MemoryError:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        record("end", job=tag, x=tag, outcome="error", error="MemoryError")
        if kill:
            os.kill(os.getpid(), signal.SIGKILL)
        raise
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    record("end", job=tag, x=tag, outcome="ok")
    return limit_mb


def crunch(tag: str, n: int) -> int:
    """A small CPU-bound process-mode job."""
    record("start", job=tag, x=tag, attempt=None)
    total = sum(i * i for i in range(n))
    record("end", job=tag, x=tag, outcome="ok")
    return total


def whoami_process() -> str:
    """``current_job()`` inside a process-mode handler (the guide says it works there)."""
    return current_job().job_id


# -- names ----------------------------------------------------------------------------------
def declare_named(app: Conveyor, name: str) -> None:
    """A queue and a task both called ``name`` whose handler writes what it was told about
    itself to the ledger (the verbatim-names test)."""
    app.queue(name)

    async def seen(value: str) -> str:
        ctx = current_job()
        record(
            "seen",
            value=value,
            seen_task=ctx.task,
            seen_queue=ctx.queue,
            seen_key=ctx.idempotency_key,
            seen_trace=ctx.trace_id,
            seen_metadata=ctx.metadata,
        )
        return value

    app.task(name=name, queue=name)(seen)


# -- the app --------------------------------------------------------------------------------
def build_app(
    url: str,
    *,
    backend_options: dict[str, Any] | None = None,
    lease: float = 2.0,
    heartbeat: float = 0.5,
    max_stalls: int = 3,
    clock: Any = None,
) -> Conveyor:
    """The reliability app: the same tasks in the test process and in every worker."""
    app = Conveyor(
        url,
        lease=lease,
        heartbeat_interval=heartbeat,
        max_stalls=max_stalls,
        backend_options=backend_options,
        clock=clock,
    )

    @app.task(name="work")
    @ledgered
    async def work(ms: int = 0) -> int:
        await asyncio.sleep(ms / 1000)
        return ms

    @app.task(name="sync_work")
    @ledgered
    def sync_work(ms: int = 0) -> int:
        ctx = current_job()
        deadline = time.monotonic() + ms / 1000
        while time.monotonic() < deadline:
            ctx.raise_if_cancelled()
            time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))
        return ms

    flaky_retry = RetryPolicy.build(FLAKY_ATTEMPTS, backoff="fixed", delay=0.2, jitter=False)

    @app.task(name="flaky", retry=flaky_retry)
    @ledgered
    async def flaky(fails: int, ms: int = 0) -> int:
        """Raises on its first ``fails`` attempts, then succeeds."""
        await asyncio.sleep(ms / 1000)
        if current_job().attempt <= fails:
            raise RuntimeError(f"flaky failure on attempt {current_job().attempt}")
        return fails

    boom_retry = RetryPolicy.build(BOOM_ATTEMPTS, backoff="fixed", delay=BOOM_DELAY, jitter=False)

    @app.task(name="boom", retry=boom_retry)
    @ledgered
    async def boom(message: str = "boom") -> None:
        raise RuntimeError(message)

    @app.task(name="sleeper")
    @ledgered
    async def sleeper(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    @app.task(name="hang", timeout=HANG_TIMEOUT)
    @ledgered
    async def hang(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    hang_retry_policy = RetryPolicy.build(
        2, backoff="fixed", delay=0.1, jitter=False, retry_on=[JobTimeout]
    )

    @app.task(name="hang_retry", timeout=HANG_TIMEOUT, retry=hang_retry_policy)
    @ledgered
    async def hang_retry(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    @app.task(name="hang_thread", timeout=HANG_TIMEOUT)
    @ledgered
    def hang_thread(seconds: float) -> float:
        """A thread handler that ignores cancellation (as most blocking code does)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.02)
        return seconds

    @app.task(name="stubborn")
    @ledgered
    def stubborn(seconds: float) -> float:
        """A thread handler with no timeout that never looks at its cancellation flag."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.02)
        return seconds

    @app.task(name="block")
    @ledgered
    async def block(seconds: float, attempts: int = 1) -> float:
        """Holds the event loop with CPU work for ``seconds`` on its first ``attempts`` runs."""
        if current_job().attempt <= attempts:
            t0 = _real_time()
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                sum(range(1000))
            record("block", t0=t0, t1=_real_time())
        await asyncio.sleep(0)
        return seconds

    @app.task(name="crash")
    @ledgered
    async def crash() -> None:
        """Takes its worker process down, as a segfault or the OOM killer would."""
        os._exit(1)

    @app.task(name="echo")
    async def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return {"a": list(args), "k": kwargs}

    for name in json.loads(os.environ.get(ENV_NAMES) or "[]"):
        declare_named(app, name)

    oom_retry = RetryPolicy.build(2, backoff="fixed", delay=0.1, jitter=False)
    app.task(name="oom", executor="process", retry=oom_retry)(oom)
    app.task(name="crunch", executor="process")(crunch)
    app.task(name="whoami_process", executor="process")(whoami_process)
    return app


def _dump_locals(frame: Any) -> None:
    import sys

    name = frame.f_code.co_name
    local = frame.f_locals
    if name == "_claim_loop":
        w = local.get("self")
        sys.stderr.write(
            f"      active={len(w.active)} zombies={w.zombie_threads} free={w.free_slots()} "
            f"idle_claims={local.get('idle_claims')} stopping={w.stopping}\n"
        )
    elif name == "wait_for_jobs" and "deadline" in local:
        loop = asyncio.get_running_loop()
        keys = ("wait", "remaining", "due_in", "timeout")
        shown = {k: local.get(k) for k in keys}
        sys.stderr.write(f"      {shown} deadline-now={local['deadline'] - loop.time():.3f}\n")


def _dump_tasks(signum: int, frame: Any) -> None:
    """SIGUSR1: print every asyncio task's stack and every thread's (diagnosing hangs)."""
    import faulthandler
    import sys

    try:
        tasks = asyncio.all_tasks(asyncio.get_running_loop())
    except RuntimeError:
        tasks = set()
    sys.stderr.write(f"=== {len(tasks)} asyncio tasks ===\n")
    for task in tasks:
        sys.stderr.write(f"-- {task.get_name()}\n")
        awaited: Any = task.get_coro()
        while awaited is not None:
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
            if frame is None:
                sys.stderr.write(f"   awaits {awaited!r:.200}\n")
                break
            code = frame.f_code
            sys.stderr.write(f"   {code.co_filename}:{frame.f_lineno} {code.co_name}\n")
            _dump_locals(frame)
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    faulthandler.dump_traceback(all_threads=True)
    sys.stderr.flush()


def from_env() -> Conveyor:
    """The app a worker subprocess runs, configured by the environment (see the docstring)."""
    skew = float(os.environ.get(ENV_SKEW) or 0)
    clock = None
    if skew:
        if os.environ.get(ENV_CLOCK, "system") == "inject":
            clock = OffsetClock(skew)
        else:
            skew_process_clock(skew)
    app = build_app(
        os.environ[ENV_URL],
        backend_options=json.loads(os.environ.get(ENV_OPTIONS) or "{}") or None,
        lease=float(os.environ.get(ENV_LEASE, "2")),
        heartbeat=float(os.environ.get(ENV_HEARTBEAT, "0.5")),
        max_stalls=int(os.environ.get(ENV_MAX_STALLS, "3")),
        clock=clock,
    )
    if os.environ.get(ENV_LEDGER):
        _install_observers(app)
    signal.signal(signal.SIGUSR1, _dump_tasks)
    return app
