"""The reliability harness: an isolated store, real worker processes, the ledger, faults.

A :class:`Rig` is one scenario's world: a fresh store (a SQLite file, a PostgreSQL schema or a
Redis key prefix, on the shared servers or on a private one the test controls), the
reliability app bound to it in the test process, the ledger file the workers' handlers write,
the :class:`~tests.reliability.checker.FaultLog` of what the test did, and helpers to start,
kill, pause and stop ``python -m conveyor worker`` processes. The fixture in ``conftest.py``
reaps every process at teardown, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conveyor import Conveyor
from conveyor.domain.job import JobFilter, JobRecord
from tests.acceptance.conftest import Proc, wait_until

from . import apps
from .checker import COMPLETED, Expect, FaultLog, Verdict, check, recovery_times

REPO = Path(__file__).resolve().parents[2]
APP_PATH = "tests.reliability.apps:from_env"

__all__ = ["Ledger", "Proc", "Rig", "now", "wait_until"]


def now() -> float:
    """The real wall clock (what the ledger and the fault log use)."""
    return apps.real_time()


class Ledger:
    """Reads the ledger file incrementally (only new complete lines are parsed)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._events: list[dict[str, Any]] = []

    def events(self, ev: str | None = None) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            data = b""
        end = data.rfind(b"\n")
        if end >= 0:
            for line in data[: end + 1].splitlines():
                self._events.append(json.loads(line))
            self._offset += end + 1
        if ev is None:
            return list(self._events)
        return [e for e in self._events if e.get("ev") == ev]

    def count(self, ev: str, pid: int | None = None) -> int:
        return sum(1 for e in self.events(ev) if pid is None or e.get("pid") == pid)

    def jobs(self, ev: str = "start", pid: int | None = None) -> set[str]:
        return {e["job"] for e in self.events(ev) if pid is None or e.get("pid") == pid}


@dataclass(eq=False)
class Rig:
    kind: str
    url: str
    options: dict[str, Any]
    tmp: Path
    lease: float
    heartbeat: float
    max_stalls: int
    app: Conveyor
    ledger: Ledger
    faults: FaultLog = field(default_factory=FaultLog)
    procs: list[Proc] = field(default_factory=list)
    expected: dict[str, Expect] = field(default_factory=dict)
    ambiguous: set[str] = field(default_factory=set)
    names: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=lambda: time.monotonic())
    _counter: int = 0

    # -- processes ----------------------------------------------------------------------------
    def env(self, url: str | None = None, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "REL_"))}
        env.update(
            {
                apps.ENV_URL: url or self.url,
                apps.ENV_OPTIONS: json.dumps(self.options),
                apps.ENV_LEDGER: str(self.ledger.path),
                apps.ENV_LEASE: str(self.lease),
                apps.ENV_HEARTBEAT: str(self.heartbeat),
                apps.ENV_MAX_STALLS: str(self.max_stalls),
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": str(REPO),
            }
        )
        if self.names:
            env[apps.ENV_NAMES] = json.dumps(self.names)
        env.update(extra)
        return env

    def spawn(self, argv: list[str], name: str, env: Mapping[str, str]) -> Proc:
        self._counter += 1
        log_path = self.tmp / f"{name}-{self._counter}.log"
        with open(log_path, "wb") as out:
            popen = subprocess.Popen(
                argv,
                cwd=REPO,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(popen, log_path, argv)
        self.procs.append(proc)
        return proc

    def start_worker(
        self,
        *extra: str,
        concurrency: int = 4,
        grace: float | None = None,
        url: str | None = None,
        skew: float | None = None,
        clock: str = "system",
        poll: float = 0.2,
        log_level: str = os.environ.get("REL_LOG_LEVEL", "warning"),
    ) -> Proc:
        """``python -m conveyor worker tests.reliability.apps:from_env ...`` on this store."""
        argv = [
            sys.executable, "-m", "conveyor", "worker", APP_PATH,
            "--concurrency", str(concurrency),
            "--poll-interval", str(poll),
            "--log-level", log_level,
            "--no-scheduler",
        ]  # fmt: skip
        if grace is not None:
            argv += ["--grace", str(grace)]
        env = self.env(url)
        if skew:
            env[apps.ENV_SKEW] = str(skew)
            env[apps.ENV_CLOCK] = clock
        return self.spawn([*argv, *extra], "worker", env)

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "conveyor", *args, "--app", APP_PATH],
            cwd=REPO,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    async def wait_started(self, *procs: Proc, timeout: float = 30) -> None:
        """Until each worker has registered itself in the store."""

        async def registered() -> bool:
            pids = {w.pid for w in await self.app.inspect.workers()} if procs else set()
            for p in procs:
                if not p.alive:
                    raise AssertionError(f"worker {p.pid} exited early:\n{p.log()[-3000:]}")
            return all(p.pid in pids for p in procs)

        await wait_until(registered, timeout, interval=0.1, message="workers to register")

    async def dump(self, proc: Proc) -> str:
        """Ask a live worker for its asyncio task stacks (SIGUSR1); the tail of its log."""
        if proc.alive:
            before = len(proc.log())
            proc.signal(signal.SIGUSR1)
            with contextlib.suppress(AssertionError):
                await wait_until(lambda: "Thread 0x" in proc.log()[before:], 5, message="a dump")
        return proc.log()[-20000:]

    def kill(self, proc: Proc) -> float:
        """``kill -9`` now; the time is logged as a fault."""
        t = now()
        os.kill(proc.pid, signal.SIGKILL)
        self.faults.killed(proc.pid, t)
        return t

    async def sigterm(
        self, proc: Proc, timeout: float = 30, *, twice: bool = False
    ) -> tuple[int, float]:
        """SIGTERM (``twice``: a second one 0.2 s later); wait for the exit; (exit code,
        seconds it took). The fault log gets the shutdown window and the exit."""
        t, wall = time.monotonic(), now()
        proc.signal(signal.SIGTERM)
        if twice:
            await asyncio.sleep(0.2)  # the gap between the two signals, not a wait
            proc.signal(signal.SIGTERM)
        code = await proc.wait_exit(timeout)
        self.faults.add("shutdown", [proc.pid], wall, now())
        self.faults.add("exited", [proc.pid], now(), None)
        return code, time.monotonic() - t

    async def stop_all(self, timeout: float = 30) -> dict[int, int]:
        """SIGTERM every live worker, wait for them; the exit code of each."""
        live = [p for p in self.procs if p.alive]
        for p in live:
            p.signal(signal.SIGTERM)
        codes = {}
        for p in live:
            try:
                codes[p.pid] = await p.wait_exit(timeout)
            except AssertionError:
                raise AssertionError(
                    f"worker {p.pid} did not exit {timeout}s after SIGTERM:\n"
                    + (await self.dump(p))[-12000:]
                ) from None
        self.note_deaths()
        return codes

    def note_deaths(self) -> None:
        """Workers that exited on their own (a crashing handler) count as dead from now."""
        for p in self.procs:
            if not p.alive and p.popen.returncode not in (0, None):
                self.faults.died(p.pid, now())

    def logs_without_tracebacks(self, *allowed: str) -> None:
        for p in self.procs:
            text = p.log()
            for block in text.split("Traceback (most recent call last)")[1:]:
                head = block[:4000]
                assert any(a in head for a in allowed), f"pid {p.pid} printed:\n{head}"

    def declare_names(self, names: list[str]) -> None:
        """A queue and a task under each name, here and in every worker started from now."""
        for name in names:
            apps.declare_named(self.app, name)
        self.names.extend(names)

    # -- jobs -----------------------------------------------------------------------------------
    def expect(self, ids: Iterable[str], expect: Expect = COMPLETED) -> None:
        for job_id in ids:
            self.expected[job_id] = expect

    async def enqueue(
        self, task: str, *args: Any, expect: Expect = COMPLETED, **options: Any
    ) -> str:
        t = self.app.tasks[task]
        call = t.options(**options) if options else t
        handle = await call.enqueue(*args)
        self.expected[handle.id] = expect
        return handle.id

    async def enqueue_many(
        self, calls: list[tuple[str, tuple[Any, ...]]], expect: Expect = COMPLETED
    ) -> list[str]:
        specs = [self.app.tasks[name].call(*args) for name, args in calls]
        handles = await self.app.enqueue_many(specs)
        ids = [h.id for h in handles]
        self.expect(ids, expect)
        return ids

    async def records(self) -> dict[str, JobRecord]:
        backend = await self.app.backend()
        return {r.id: r for r in await backend.list_jobs(JobFilter(), limit=10_000_000)}

    async def counts(self) -> Counter:
        backend = await self.app.backend()
        out: Counter = Counter()
        for row in await backend.count_jobs():
            out[row.state.value] += row.count
        return out

    async def drain(self, timeout: float, ids: Iterable[str] | None = None) -> float:
        """Wait until every expected job is terminal; seconds it took."""
        wanted = len(self.expected) if ids is None else len(list(ids))
        t0 = time.monotonic()

        async def settled() -> bool:
            c = await self.counts()
            waiting = c["queued"] + c["running"] + c["scheduled"] + c["blocked"]
            done = sum(c[s] for s in ("completed", "failed", "cancelled", "expired"))
            return waiting == 0 and done >= wanted

        await wait_until(settled, timeout, interval=0.2, message=f"{wanted} jobs to finish")
        return time.monotonic() - t0

    async def verdict(self, *, grace: float | None = None) -> tuple[Verdict, dict[str, JobRecord]]:
        records = await self.records()
        self.note_deaths()
        verdict = check(
            self.expected,
            records,
            self.ledger.events(),
            self.faults,
            grace=grace if grace is not None else self.lease + 4 * self.heartbeat,
            ambiguous=self.ambiguous,
            horizon=now(),
        )
        return verdict, records

    def recovery(self, records: Mapping[str, JobRecord]) -> dict[str, Any]:
        return recovery_times(self.ledger.events(), self.faults, records)

    def elapsed(self) -> float:
        return time.monotonic() - self.started_at


# -- sampling a process ---------------------------------------------------------------------
def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def fd_counts(pid: int) -> tuple[int, int] | None:
    """(open file descriptors, of which sockets)."""
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    sockets = 0
    for name in names:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                sockets += 1
    return len(names), sockets


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


async def idle_cpu(pid: int, seconds: float) -> float:
    """Fraction of one core ``pid`` used over the next ``seconds`` (a hot-loop detector)."""
    before = cpu_seconds(pid)
    t0 = time.monotonic()
    await asyncio.sleep(seconds)  # the measurement window itself, not a wait for a condition
    after = cpu_seconds(pid)
    if before is None or after is None:
        return 0.0
    return (after - before) / (time.monotonic() - t0)
