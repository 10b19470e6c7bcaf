"""Acceptance fixtures: a fresh store per test, a ledger, and real worker processes.

Each test gets a :class:`Store`: an isolated store (a SQLite file in ``tmp_path``, a PostgreSQL
schema or a Redis key prefix), the acceptance app bound to it in the test process, the ledger
file the handlers write, and helpers that start ``python -m conveyor worker`` subprocesses and
run ``conveyor`` CLI commands against it. Every process a test starts is killed and reaped at
teardown, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from conveyor import Conveyor
from conveyor.backends import factory_from_url
from conveyor.domain.ids import new_job_id
from conveyor.domain.job import JobFilter, JobRecord, NewJob
from conveyor.domain.states import JobState
from tests.support import POSTGRES_URL, REDIS_URL, in_ci, reachable, server_of, wait_until

from . import apps

__all__ = ["Proc", "Store", "wait_until"]

REPO = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / ".results"
APP_PATH = "tests.acceptance.apps:from_env"

_SERVERS = {"postgres": server_of(POSTGRES_URL), "redis": server_of(REDIS_URL)}
KINDS = ("sqlite", "postgres", "redis")


# -- waiting: tests.support.wait_until (re-exported here for the suites that import it) ----------

# -- the ledger -----------------------------------------------------------------------------------
@dataclass
class Ledger:
    """The handlers' own record of what ran: one JSON object per line (see ``apps.record``)."""

    path: Path

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines(keepends=True):
            if not line.endswith("\n"):
                break  # being written right now
            entry = json.loads(line)
            if event is None or entry["event"] == event:
                out.append(entry)
        return out

    def starts(self, job: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events("start") if job is None or e["job"] == job]

    def by_job(self, event: str = "start") -> dict[str, list[dict[str, Any]]]:
        grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for entry in self.events(event):
            grouped[entry["job"]].append(entry)
        return dict(grouped)


# -- processes ------------------------------------------------------------------------------------
@dataclass(eq=False)
class Proc:
    """A process a test started (in its own session, so teardown can reap its children)."""

    popen: subprocess.Popen[bytes]
    log_path: Path
    argv: list[str]

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    async def wait_exit(self, timeout: float) -> int:
        """Wait (polling) for the process to exit; its return code."""
        await wait_until(lambda: not self.alive, timeout, message=f"pid {self.pid} to exit")
        code = self.popen.wait()
        return code

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def reap(self) -> None:
        """Kill the process and everything in its session; wait for it."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self.popen.kill()
        self.popen.wait(10)


def tracebacks(text: str) -> list[str]:
    """Every Python traceback in a log, each up to and including its exception line."""
    found: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].lstrip().startswith("Traceback (most recent call last)"):
            block = [lines[i]]
            i += 1
            # The frames are indented; the exception line is the first unindented one after
            # them (chained tracebacks repeat the pattern and are taken one by one).
            while i < len(lines) and (lines[i].startswith(" ") or not lines[i].strip()):
                block.append(lines[i])
                i += 1
            if i < len(lines):
                block.append(lines[i])
            found.append("\n".join(block))
        i += 1
    return found


def unexpected_tracebacks(text: str, expected: tuple[str, ...]) -> list[str]:
    """The tracebacks of ``text`` whose exception line is none of ``expected``."""
    out = []
    for block in tracebacks(text):
        last = block.rstrip().splitlines()[-1].strip()
        if not any(last.startswith(e) for e in expected):
            out.append(block)
    return out


def worker_pid(lease_owner: str | None) -> int | None:
    """The pid inside a worker id (``host:pid:random``)."""
    if not lease_owner:
        return None
    parts = lease_owner.split(":")
    return int(parts[-2]) if len(parts) >= 3 and parts[-2].isdigit() else None


# -- the store ------------------------------------------------------------------------------------
@dataclass(eq=False)
class Store:
    """One isolated store with the acceptance app bound to it (see the module docstring)."""

    kind: str
    url: str
    options: dict[str, Any]
    tmp: Path
    lease: float
    heartbeat: float
    max_stalls: int
    app: Conveyor
    ledger: Ledger
    procs: list[Proc] = field(default_factory=list)
    #: Exception lines a traceback in a worker log may end with (checked after each test).
    expected: tuple[str, ...] = apps.EXPECTED_TRACEBACKS
    _counter: int = 0

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        env.update(
            {
                apps.ENV_URL: self.url,
                apps.ENV_OPTIONS: json.dumps(self.options),
                apps.ENV_LEDGER: str(self.ledger.path),
                apps.ENV_LEASE: str(self.lease),
                apps.ENV_HEARTBEAT: str(self.heartbeat),
                apps.ENV_MAX_STALLS: str(self.max_stalls),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(extra)
        return env

    def spawn(self, argv: list[str], name: str) -> Proc:
        self._counter += 1
        log_path = self.tmp / f"{name}-{self._counter}.log"
        with open(log_path, "wb") as out:
            popen = subprocess.Popen(
                argv,
                cwd=REPO,
                env=self.env(),
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
        log_level: str = "warning",
    ) -> Proc:
        """``python -m conveyor worker tests.acceptance.apps:from_env …`` on this store."""
        argv = [
            sys.executable,
            "-m",
            "conveyor",
            "worker",
            APP_PATH,
            "--concurrency",
            str(concurrency),
            "--poll-interval",
            "0.2",
            "--log-level",
            log_level,
        ]
        if grace is not None:
            argv += ["--grace", str(grace)]
        return self.spawn([*argv, *extra], "worker")

    def cli(
        self, *args: str, with_app: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run ``conveyor ARGS --app …`` (stdin not a TTY) and return the finished process."""
        argv = [sys.executable, "-m", "conveyor", *args]
        if with_app:
            argv += ["--app", APP_PATH]
        return subprocess.run(
            argv,
            cwd=REPO,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def cli_many(self, *commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
        """Run independent (read-only) commands concurrently; results in order."""
        with ThreadPoolExecutor(max_workers=4) as pool:
            return list(pool.map(lambda args: self.cli(*args), commands))

    def cli_json(self, *args: str) -> Any:
        return self.parse_json(args, self.cli(*args, "--json"))

    def cli_json_many(self, *commands: tuple[str, ...]) -> list[Any]:
        done = self.cli_many(*[(*args, "--json") for args in commands])
        return [self.parse_json(args, d) for args, d in zip(commands, done, strict=True)]

    @staticmethod
    def parse_json(args: tuple[str, ...], done: subprocess.CompletedProcess[str]) -> Any:
        assert done.returncode == 0, f"{args} -> {done.returncode}\n{done.stdout}\n{done.stderr}"
        return json.loads(done.stdout)

    # -- reading the store ----------------------------------------------------------------------
    async def record(self, job_id: str) -> JobRecord:
        backend = await self.app.backend()
        rec = await backend.get_job(job_id)
        assert rec is not None, f"job {job_id} is missing from the store"
        return rec

    async def records(self, ids: Iterable[str]) -> dict[str, JobRecord]:
        return {job_id: await self.record(job_id) for job_id in ids}

    async def in_state(self, state: JobState, limit: int = 100_000) -> list[JobRecord]:
        backend = await self.app.backend()
        return await backend.list_jobs(JobFilter(states=(state,)), limit=limit)

    async def count(self, state: JobState) -> int:
        backend = await self.app.backend()
        return sum(r.count for r in await backend.count_jobs() if r.state is state)

    async def insert_raw(self, task: str, payload: bytes, **fields: Any) -> str:
        """Store a job through the backend API directly (bypassing the core's checks)."""
        job_id = new_job_id()
        backend = await self.app.backend()
        await backend.enqueue(
            [NewJob(id=job_id, task=task, queue="default", payload=payload, **fields)]
        )
        return job_id

    def check_logs_clean(self, *procs: Proc) -> None:
        """No process printed a traceback it did not mean to: each traceback in each log must
        end with one of the :attr:`expected` exception lines (the failures the acceptance
        tasks raise on purpose), one by one — one expected traceback does not excuse another.
        Runs after every acceptance test that passed."""
        for proc in procs or tuple(self.procs):
            for problem in unexpected_tracebacks(proc.log(), self.expected):
                raise AssertionError(f"pid {proc.pid} logged an unexpected traceback:\n{problem}")


# -- backend availability -------------------------------------------------------------------------
_AVAILABLE: dict[str, tuple[str | None, str | None]] = {}  # kind -> (unreachable, broken)


def _url_and_options(kind: str, tmp: Path) -> tuple[str, dict[str, Any]]:
    if kind == "sqlite":
        return f"sqlite:///{tmp}/jobs.db", {}
    if kind == "postgres":
        return POSTGRES_URL, {"schema": f"acc_{uuid4().hex[:12]}"}
    if kind == "redis":
        return REDIS_URL, {"prefix": f"acc{uuid4().hex[:12]}"}
    raise ValueError(kind)


async def _smoke(kind: str, tmp: Path) -> None:
    """Enqueue, claim and complete one job on a throwaway store of ``kind``."""
    url, options = _url_and_options(kind, tmp)
    factory = factory_from_url(url, **options)
    try:
        await factory.migrate()
        client = factory.create()
        await client.open()
        try:
            job_id = new_job_id()
            await client.enqueue([NewJob(id=job_id, task="t", queue="default", payload=b"[]")])
            claimed = await client.claim("smoke:1:x", ["default"], 1, 5.0)
            assert [c.id for c in claimed] == [job_id], claimed
            assert await client.complete(job_id, claimed[0].fence, None)
            rec = await client.get_job(job_id)
            assert rec is not None and rec.state is JobState.COMPLETED, rec
        finally:
            await client.close()
    finally:
        await factory.destroy()


async def require_kind(kind: str, tmp: Path) -> None:
    """Skip (with the reason) when the backend ``kind`` cannot run here because its server is
    unreachable (fail instead under ``CI``). A reachable server whose backend fails the smoke
    check (enqueue, claim, complete one job) is a failure of the code: the test fails."""
    if kind not in _AVAILABLE:
        unreachable: str | None = None
        broken: str | None = None
        server = _SERVERS.get(kind)
        try:
            importlib.import_module(f"conveyor.backends.{kind}")
        except ImportError as exc:
            broken = f"conveyor.backends.{kind} cannot be imported: {exc}"
        if broken is None and server is not None and not reachable(*server):
            unreachable = f"{kind} server at {server[0]}:{server[1]} is unreachable"
        if broken is None and unreachable is None:
            try:
                await asyncio.wait_for(_smoke(kind, tmp), 20)
            except Exception as exc:  # noqa: BLE001 - reported as the failure it is
                broken = f"{kind} backend failed the smoke check: {type(exc).__name__}: {exc}"
        _AVAILABLE[kind] = (unreachable, broken)
    unreachable, broken = _AVAILABLE[kind]
    if broken is not None:
        pytest.fail(broken)
    if unreachable is not None:
        if in_ci():
            pytest.fail(unreachable)
        pytest.skip(unreachable)


MakeStore = Callable[..., Awaitable[Store]]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.stash[_FAILED] = report.failed
        item.stash[_RAN] = report.passed


_FAILED = pytest.StashKey[bool]()
_RAN = pytest.StashKey[bool]()


@pytest.fixture
async def make_store(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[MakeStore]:
    """``await make_store(kind, lease=…, heartbeat=…, max_stalls=…)``: a fresh :class:`Store`."""
    made: list[Store] = []

    async def make(
        kind: str = "sqlite", *, lease: float = 2.0, heartbeat: float = 0.5, max_stalls: int = 1
    ) -> Store:
        await require_kind(kind, tmp_path)
        directory = tmp_path / f"store{len(made)}"
        directory.mkdir()
        url, options = _url_and_options(kind, directory)
        app = apps.build_app(
            url,
            backend_options=options or None,
            lease=lease,
            heartbeat=heartbeat,
            max_stalls=max_stalls,
        )
        await app.migrate()
        store = Store(
            kind, url, options, directory, lease, heartbeat, max_stalls, app,
            Ledger(directory / "ledger.jsonl"),
        )  # fmt: skip
        made.append(store)
        return store

    try:
        yield make
    finally:
        failed = request.node.stash.get(_FAILED, False)
        for store in made:
            for proc in store.procs:
                if failed:
                    # Shown with the failure report: what each process said.
                    print(f"--- pid {proc.pid} ({' '.join(proc.argv[3:6])}) log tail ---")
                    print(proc.log()[-3000:])
                proc.reap()
        if not failed and request.node.stash.get(_RAN, False):
            for store in made:
                store.check_logs_clean()
        for store in made:
            with contextlib.suppress(Exception):
                await store.app.close()
            if store.kind != "sqlite":
                with contextlib.suppress(Exception):
                    await store.app.factory.destroy()


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def write_result(name: str, data: dict[str, Any]) -> Path:
    """Save a measurement under ``tests/acceptance/.results/`` (gitignored) and print it."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({**data, "recorded_at": time.time()}, indent=2, sort_keys=True))
    print(f"\n[acceptance] {name}: {json.dumps(data, sort_keys=True)}")
    return path
