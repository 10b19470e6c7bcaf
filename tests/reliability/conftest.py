"""Fixtures of the reliability suite: sizes, rigs, private servers, a proxy, results.

Two sizes. The bounded CI form (default) keeps the whole directory to a few minutes on a
2-core machine with ``-n 2``; the long form (``CONVEYOR_RELIABILITY=long`` or ``--long``) runs
thousands of jobs and minutes of soak. Every test writes its figures to
``tests/reliability/.results/<scenario>--<backend>.json``; ``report.py`` turns them into
``RELIABILITY.md`` — at the end of the session only when ``CONVEYOR_RELIABILITY_REPORT=1``
(``make reliability``), or on its own (``make reliability-report``).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from tests.acceptance.conftest import require_kind
from tests.support import POSTGRES_URL, REDIS_URL
from tests.support.servers import (
    PgCluster,
    RedisServer,
    TcpProxy,
    drop_template,
    pg_unavailable_reason,
)

from . import apps
from .harness import Ledger, Rig

HERE = Path(__file__).resolve().parent
RESULTS = HERE / ".results"
KINDS = ("sqlite", "postgres", "redis")
FAILED = pytest.StashKey[bool]()


def pytest_addoption(parser: pytest.Parser) -> None:
    with contextlib.suppress(ValueError):  # already added (another conftest loaded us)
        parser.addoption(
            "--long",
            action="store_true",
            default=False,
            help="reliability suite: the long form (also CONVEYOR_RELIABILITY=long)",
        )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "reliability: the fault suite (tests/reliability)")


def is_long(config: pytest.Config) -> bool:
    try:
        flag = bool(config.getoption("--long"))
    except ValueError:
        flag = False
    return flag or os.environ.get("CONVEYOR_RELIABILITY", "").strip().lower() == "long"


@dataclass(frozen=True)
class Size:
    """Scales a scenario: ``pick(ci, long)``."""

    long: bool

    @property
    def name(self) -> str:
        return "long" if self.long else "ci"

    def pick(self, ci: Any, long: Any) -> Any:
        return long if self.long else ci


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    long = is_long(config)
    for item in items:
        if HERE not in Path(str(item.path)).parents:
            continue
        item.add_marker(pytest.mark.reliability)
        if long:
            item.add_marker(pytest.mark.timeout(1800))


@pytest.fixture(scope="session")
def size(pytestconfig: pytest.Config) -> Size:
    return Size(is_long(pytestconfig))


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- results --------------------------------------------------------------------------------
class Results:
    """The figures one test records; the outcome is added after the test ran."""

    def __init__(self, size: Size, nodeid: str) -> None:
        self.size = size
        self.nodeid = nodeid
        self.paths: list[Path] = []

    def write(self, scenario: str, backend: str, data: dict[str, Any]) -> Path:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"{scenario}--{backend}.json"
        doc = {
            "scenario": scenario,
            "backend": backend,
            "size": self.size.name,
            "test": self.nodeid,
            "recorded_at": time.time(),
            "machine": machine(),
            **data,
        }
        path.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str))
        self.paths.append(path)
        print(f"\n[reliability] {scenario}/{backend}: {json.dumps(data, default=str)[:2000]}")
        return path

    def skip(self, scenario: str, backend: str, reason: str) -> None:
        """Record that a scenario does not apply to a backend, then skip."""
        self.write(scenario, backend, {"skipped": reason})
        pytest.skip(reason)


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }


@pytest.fixture
def results(size: Size, request: pytest.FixtureRequest) -> Results:
    return Results(size, request.node.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.stash[FAILED] = report.failed
        if HERE in Path(str(item.path)).parents:
            _note_bug(item.nodeid, getattr(report, "wasxfail", None) if report.skipped else None)
    res = getattr(item, "funcargs", {}).get("results")
    if not isinstance(res, Results) or report.when not in ("call", "setup"):
        return
    if report.when == "setup" and not report.skipped:
        return
    status = "xfailed" if hasattr(report, "wasxfail") and report.skipped else report.outcome
    if hasattr(report, "wasxfail") and report.passed:
        status = "xpassed"
    for path in res.paths:
        with contextlib.suppress(OSError, ValueError):
            doc = json.loads(path.read_text())
            if "skipped" not in doc:
                doc["outcome"] = status
                if getattr(report, "wasxfail", None):
                    doc["xfail_reason"] = report.wasxfail
                path.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str))


def _note_bug(nodeid: str, reason: str | None) -> None:
    """Keep ``.results/bug--<test>.json`` for each strict xfail (a known bug), and drop it once
    the test passes."""
    name = "bug--" + "".join(c if c.isalnum() or c in "-_." else "_" for c in nodeid)[-150:]
    path = RESULTS / f"{name}.json"
    if reason:
        RESULTS.mkdir(exist_ok=True)
        path.write_text(json.dumps({"bug": nodeid, "reason": reason, "recorded_at": time.time()}))
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # RELIABILITY.md is tracked: only an explicit request rewrites it (`make reliability`,
    # `make reliability-report`), never an ordinary test run.
    if not RESULTS.is_dir() or os.environ.get("CONVEYOR_RELIABILITY_REPORT", "0") != "1":
        return
    ran_here = any(HERE in Path(str(i.path)).parents for i in getattr(session, "items", []))
    if not ran_here:
        return
    from .report import write_report

    with contextlib.suppress(Exception):
        write_report()


# -- rigs -----------------------------------------------------------------------------------
MakeRig = Callable[..., Awaitable[Rig]]


def _url_and_options(kind: str, tmp: Path, url: str | None) -> tuple[str, dict[str, Any]]:
    if kind == "sqlite":
        return f"sqlite:///{tmp}/jobs.db", {}
    if kind == "postgres":
        return url or POSTGRES_URL, {"schema": f"rel_{uuid4().hex[:12]}"}
    if kind == "redis":
        return url or REDIS_URL, {"prefix": f"rel{uuid4().hex[:12]}"}
    raise ValueError(kind)


@pytest.fixture
async def make_rig(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[MakeRig]:
    """``await make_rig(kind, lease=..., heartbeat=..., max_stalls=..., url=...)``: a fresh
    :class:`Rig`. ``url`` points at a private server instead of the shared one."""
    made: list[Rig] = []

    async def make(
        kind: str,
        *,
        lease: float = 2.0,
        heartbeat: float = 0.5,
        max_stalls: int = 3,
        url: str | None = None,
    ) -> Rig:
        if url is None:
            await require_kind(kind, tmp_path)
        directory = tmp_path / f"rig{len(made)}"
        directory.mkdir()
        store_url, options = _url_and_options(kind, directory, url)
        app = apps.build_app(
            store_url,
            backend_options=options or None,
            lease=lease,
            heartbeat=heartbeat,
            max_stalls=max_stalls,
        )
        await app.migrate()
        rig = Rig(
            kind, store_url, options, directory, lease, heartbeat, max_stalls, app,
            Ledger(directory / "ledger.jsonl"),
        )  # fmt: skip
        made.append(rig)
        return rig

    try:
        yield make
    finally:
        failed = request.node.stash.get(FAILED, False)
        for rig in made:
            for proc in rig.procs:
                if failed:
                    print(f"--- pid {proc.pid} log tail ---\n{proc.log()[-3000:]}")
                proc.reap()
        for rig in made:
            with contextlib.suppress(Exception):
                await rig.app.close()
            if rig.kind != "sqlite":
                with contextlib.suppress(Exception):
                    await rig.app.factory.destroy()


# -- private servers ------------------------------------------------------------------------
@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """``redis_server(appendfsync="always")``: a started private Redis, stopped afterwards."""
    servers: list[RedisServer] = []

    def make(appendfsync: str | None = "always") -> RedisServer:
        try:
            server = RedisServer(tmp_path / f"redis{len(servers)}", appendfsync=appendfsync)
        except FileNotFoundError as exc:
            pytest.skip(str(exc))
        servers.append(server)
        server.start()
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def pg_cluster() -> Iterator[Callable[[], PgCluster]]:
    """``pg_cluster()``: a started private PostgreSQL cluster, destroyed afterwards."""
    clusters: list[PgCluster] = []

    def make() -> PgCluster:
        reason = pg_unavailable_reason()
        if reason is not None:
            pytest.skip(reason)
        cluster = PgCluster()
        clusters.append(cluster)
        cluster.start()
        return cluster

    try:
        yield make
    finally:
        for cluster in clusters:
            cluster.destroy()


@pytest.fixture(scope="session", autouse=True)
def _pg_template_cleanup() -> Iterator[None]:
    yield
    drop_template()


@pytest.fixture
def tcp_proxy() -> Iterator[Callable[[int], TcpProxy]]:
    proxies: list[TcpProxy] = []

    def make(target_port: int) -> TcpProxy:
        proxy = TcpProxy(target_port).start()
        proxies.append(proxy)
        return proxy

    try:
        yield make
    finally:
        for proxy in proxies:
            proxy.close()
