"""The tasks the acceptance tests run in real worker processes.

Worker subprocesses load ``tests.acceptance.apps:from_env``; the environment says which store
to use and where the ledger is:

``ACCEPT_URL``              the store URL (a temporary SQLite file, PostgreSQL or Redis)
``ACCEPT_BACKEND_OPTIONS``  JSON ``backend_options`` (``{"schema": ...}`` / ``{"prefix": ...}``)
``ACCEPT_LEDGER``           a file every handler appends one JSON line per event to
``ACCEPT_LEASE``, ``ACCEPT_HEARTBEAT``, ``ACCEPT_MAX_STALLS``  lease settings (seconds, count)

The ledger is the tests' own record of what really ran: each line is written with one
``os.write`` on an ``O_APPEND`` descriptor, so lines from concurrent processes never interleave,
and a line written before a ``kill -9`` survives it.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from conveyor import Conveyor, RetryPolicy, current_job

ENV_URL = "ACCEPT_URL"
ENV_OPTIONS = "ACCEPT_BACKEND_OPTIONS"
ENV_LEDGER = "ACCEPT_LEDGER"
ENV_LEASE = "ACCEPT_LEASE"
ENV_HEARTBEAT = "ACCEPT_HEARTBEAT"
ENV_MAX_STALLS = "ACCEPT_MAX_STALLS"

#: Attempts of the always-failing task (total runs, retries included).
BOOM_ATTEMPTS = 3

#: The exception lines of the tracebacks the tasks below raise on purpose: a worker log may
#: hold tracebacks ending in these, and no others (see ``Store.check_logs_clean``).
EXPECTED_TRACEBACKS = (
    "RuntimeError: boom",
    "RuntimeError: kaput",
    "RuntimeError: always",
    "ValueError: card declined",
    "ValueError: payment gateway refused",
)


def record(event: str, **fields: Any) -> None:
    """Append one event about the running job to the ledger (no-op without a ledger)."""
    path = os.environ.get(ENV_LEDGER)
    if not path:
        return
    ctx = current_job()
    line = {
        "event": event,
        "job": ctx.job_id,
        "task": ctx.task,
        "attempt": ctx.attempt,
        "pid": os.getpid(),
        "t": time.time(),
        **fields,
    }
    data = (json.dumps(line) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def long_child_job(token: str, seconds: float) -> str:
    """A process-mode handler (it runs in a pool child, where there is no job context): notes
    its pid under ``token``, then works for ``seconds``."""
    path = os.environ[ENV_LEDGER]
    line = {"event": "child_start", "token": token, "pid": os.getpid(), "parent": os.getppid()}
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
    return token


def build_app(
    url: str,
    *,
    backend_options: dict[str, Any] | None = None,
    lease: float = 2.0,
    heartbeat: float = 0.5,
    max_stalls: int = 1,
) -> Conveyor:
    """The acceptance app: the same tasks in the test process and in every worker."""
    app = Conveyor(
        url,
        lease=lease,
        heartbeat_interval=heartbeat,
        max_stalls=max_stalls,
        backend_options=backend_options,
    )
    app.queue("billing")
    app.queue("payments", dead_letter="payments-dead")

    @app.task(name="work")
    async def work(ms: int) -> int:
        """Async work taking ``ms`` milliseconds."""
        record("start")
        await asyncio.sleep(ms / 1000)
        record("end")
        return ms

    @app.task(name="sync_work")
    def sync_work(ms: int) -> int:
        """The same in a thread."""
        record("start")
        time.sleep(ms / 1000)
        record("end")
        return ms

    @app.task(name="whoami")
    async def whoami(ms: int) -> dict[str, int]:
        """Work that reports which process and attempt produced the stored result."""
        record("start")
        await asyncio.sleep(ms / 1000)
        record("end")
        return {"pid": os.getpid(), "attempt": current_job().attempt}

    @app.task(name="sleeper")
    async def sleeper(seconds: float) -> str:
        """A long async job that notes how it was interrupted."""
        record("start")
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            ctx = current_job()
            record(
                "interrupted",
                cancelled=ctx.cancelled,
                reason=ctx.cancel_reason,
                shutting_down=ctx.is_shutting_down(),
            )
            raise
        record("end")
        return "slept"

    @app.task(name="sync_sleeper")
    def sync_sleeper(seconds: float) -> str:
        """A long thread job that polls its cancellation flag, as sync handlers must."""
        record("start")
        ctx = current_job()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if ctx.cancelled:
                record("interrupted", cancelled=True, reason=ctx.cancel_reason)
                ctx.raise_if_cancelled()
            time.sleep(0.02)
        record("end")
        return "slept"

    app.task(name="long_child_job", executor="process")(long_child_job)

    @app.task(name="add")
    def add(a: int, b: int) -> int:
        record("start")
        return a + b

    boom_retry = RetryPolicy.build(BOOM_ATTEMPTS, backoff="fixed", delay=0.1, jitter=False)

    @app.task(name="boom", retry=boom_retry)
    async def boom(message: str = "boom") -> None:
        """Always raises: retried, then dead-lettered with code ``error``."""
        record("start")
        raise RuntimeError(message)

    @app.task(name="billing_boom", queue="billing")
    def billing_boom() -> None:
        record("start")
        raise ValueError("card declined")

    @app.task(name="payments_boom", queue="payments")
    def payments_boom() -> None:
        record("start")
        raise ValueError("payment gateway refused")

    @app.task(name="crash")
    async def crash() -> None:
        """Takes the whole worker process down, as a segfault or the OOM killer would."""
        record("start")
        os._exit(1)

    return app


def from_env() -> Conveyor:
    """The app a worker subprocess runs, configured by the environment (see the docstring)."""
    return build_app(
        os.environ[ENV_URL],
        backend_options=json.loads(os.environ.get(ENV_OPTIONS) or "{}") or None,
        lease=float(os.environ.get(ENV_LEASE, "2")),
        heartbeat=float(os.environ.get(ENV_HEARTBEAT, "0.5")),
        max_stalls=int(os.environ.get(ENV_MAX_STALLS, "1")),
    )
