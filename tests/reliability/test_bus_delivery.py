"""The event bus under faults: at least once per (event, subscription), nothing lost once
``publish`` returned, per-key order kept — with a ledger, on every backend.

Three worker processes run ``tests.acceptance.bus_apps`` (an ordered subscription ``ledger``,
an unordered ``audit``, both writing one ledger line per handled event). A producer in the
test process publishes batches with known event ids and keys while the faults happen:

* ``bus_kill9``: the worker with the most handled events is ``kill -9``ed and replaced, again
  and again (SQLite, PostgreSQL, Redis on the shared servers);
* ``bus_store_restart``: a private PostgreSQL cluster is crash-restarted, a private Redis
  (AOF, ``appendfsync always``) is killed and restarted, while publishing goes on.

Checked: every event whose publish returned is in the log and handled by both subscriptions
(a publish that raised is *ambiguous*: if it is in the log it must be handled too); every
delivery ends ``succeeded``; for the ordered subscription the events of one key were first
handled in publish order; duplicates happen only around faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from conveyor import Conveyor
from conveyor.bus import DeliveryState, Event
from tests.acceptance import apps as accept
from tests.acceptance.bus_apps import APP_PATH, build_bus_app
from tests.acceptance.conftest import require_kind
from tests.support.servers import PgCluster, RedisServer

from .conftest import POSTGRES_URL, REDIS_URL, Results, Size
from .harness import wait_until

REPO = Path(__file__).resolve().parents[2]
KEYS = [f"k{i}" for i in range(6)]
SUBSCRIPTIONS = ("ledger", "audit")


class BusRig:
    """A store, the bus app bound to it in the test process, worker processes, the ledger."""

    def __init__(self, kind: str, url: str, options: dict[str, Any], tmp: Path) -> None:
        self.kind, self.url, self.options, self.tmp = kind, url, options, tmp
        self.ledger = tmp / "ledger.jsonl"
        self.app: Conveyor = build_bus_app(
            url, backend_options=options or None, lease=2.0, heartbeat=0.5, max_stalls=20
        )
        self.procs: list[subprocess.Popen[bytes]] = []
        self.acked: dict[str, tuple[str, int]] = {}  # event id -> (key, n)
        self.ambiguous: dict[str, tuple[str, int]] = {}
        self.seq: Counter[str] = Counter()
        self.kills = 0

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "ACCEPT_"))}
        env.update(
            {
                accept.ENV_URL: self.url,
                accept.ENV_OPTIONS: json.dumps(self.options),
                accept.ENV_LEDGER: str(self.ledger),
                accept.ENV_LEASE: "2.0",
                accept.ENV_HEARTBEAT: "0.5",
                accept.ENV_MAX_STALLS: "20",
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": str(REPO),
            }
        )
        return env

    def start_worker(self) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"worker-{len(self.procs)}.log", "wb")  # noqa: SIM115
        argv = [
            sys.executable, "-m", "conveyor", "worker", APP_PATH, "--concurrency", "8",
            "--poll-interval", "0.2", "--log-level", "warning", "--no-scheduler",
        ]  # fmt: skip
        proc = subprocess.Popen(
            argv, cwd=REPO, env=self.env(), stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()
        self.procs.append(proc)
        return proc

    async def wait_registered(self, proc: subprocess.Popen[bytes]) -> None:
        async def registered() -> bool:
            assert proc.poll() is None, f"worker {proc.pid} exited early"
            return proc.pid in {w.pid for w in await self.app.inspect.workers()}

        await wait_until(registered, 60, interval=0.1, message="a worker to register")

    def handled(self) -> list[dict[str, Any]]:
        try:
            text = self.ledger.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]

    async def publish_batch(self, rng: random.Random) -> None:
        batch = []
        for _ in range(rng.randint(1, 8)):
            key = rng.choice(KEYS)
            self.seq[key] += 1
            batch.append((uuid4().hex, key, self.seq[key]))
        events = [
            Event("order.placed", {"n": n, "ms": rng.randint(2, 25)}, key=key, id=event_id)
            for event_id, key, n in batch
        ]
        try:
            await asyncio.wait_for(self.app.bus.publish_many(events), 20)
        except Exception:  # noqa: BLE001 - the store is down: may or may not be stored
            self.ambiguous.update({e: (k, n) for e, k, n in batch})
            await asyncio.sleep(0.05)
            return
        self.acked.update({e: (k, n) for e, k, n in batch})

    def busiest(self) -> subprocess.Popen[bytes] | None:
        by_pid = Counter(e["pid"] for e in self.handled())
        live = [p for p in self.procs if p.poll() is None]
        return max(live, key=lambda p: by_pid.get(p.pid, 0), default=None)

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        self.kills += 1

    async def drained(self) -> bool:
        """Every event of the log handled by both subscriptions (ledger lines)."""
        done: dict[str, set[str]] = {s: set() for s in SUBSCRIPTIONS}
        for e in self.handled():
            done[e["sub"]].add(e["event_id"])
        stored = {e.id for e in await self.app.bus.read(0, 1_000_000)}
        wanted = set(self.acked) | (stored & set(self.ambiguous))
        return all(wanted <= done[s] for s in SUBSCRIPTIONS)

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)

    async def verdict(self) -> dict[str, Any]:
        stored = {e.id: e for e in await self.app.bus.read(0, 1_000_000)}
        lost = [e for e in self.acked if e not in stored]
        lines = self.handled()
        runs: dict[str, Counter[str]] = {s: Counter() for s in SUBSCRIPTIONS}
        first: dict[str, list[tuple[str, int]]] = {}
        seen: set[str] = set()
        for line in lines:
            runs[line["sub"]][line["event_id"]] += 1
            if line["sub"] == "ledger" and line["event_id"] not in seen:
                seen.add(line["event_id"])
                first.setdefault(line["key"], []).append((line["event_id"], line["n"]))
        wanted = set(self.acked) | (set(stored) & set(self.ambiguous))
        unhandled = {s: sorted(wanted - set(runs[s])) for s in SUBSCRIPTIONS}
        out_of_order = {
            key: [n for _, n in seq]
            for key, seq in first.items()
            if [n for _, n in seq] != sorted(n for _, n in seq)
        }
        states: Counter[str] = Counter()
        for s in SUBSCRIPTIONS:
            states.update(d.state.value for d in await self.app.bus.deliveries(s, limit=1_000_000))
        return {
            "published_acked": len(self.acked),
            "published_ambiguous": len(self.ambiguous),
            "ambiguous_stored": len(set(stored) & set(self.ambiguous)),
            "lost": lost,
            "unhandled": unhandled,
            "out_of_order_keys": out_of_order,
            "duplicate_runs": {s: sum(n - 1 for n in c.values()) for s, c in runs.items()},
            "delivery_states": dict(states),
            "kills": self.kills,
        }


@pytest.fixture
async def make_bus_rig(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    rigs: list[BusRig] = []

    async def make(kind: str, url: str | None = None) -> BusRig:
        if url is None:
            await require_kind(kind, tmp_path)
        directory = tmp_path / f"bus{len(rigs)}"
        directory.mkdir()
        if kind == "sqlite":
            store_url, options = f"sqlite:///{directory}/jobs.db", {}
        elif kind == "postgres":
            store_url, options = url or POSTGRES_URL, {"schema": f"relbus_{uuid4().hex[:10]}"}
        else:
            store_url, options = url or REDIS_URL, {"prefix": f"relbus{uuid4().hex[:10]}"}
        rig = BusRig(kind, store_url, options, directory)
        await rig.app.migrate()
        await rig.app.bus.sync()
        rigs.append(rig)
        return rig

    try:
        yield make
    finally:
        for rig in rigs:
            rig.stop()
            with contextlib.suppress(Exception):
                await rig.app.close()
            if rig.kind != "sqlite":
                with contextlib.suppress(Exception):
                    await rig.app.factory.destroy()


async def _check(rig: BusRig, results: Results, scenario: str, notes: str) -> None:
    verdict = await rig.verdict()
    results.write(scenario, rig.kind, {**verdict, "notes": notes})
    assert verdict["lost"] == [], verdict["lost"][:10]
    assert verdict["unhandled"] == {s: [] for s in SUBSCRIPTIONS}, verdict["unhandled"]
    assert verdict["out_of_order_keys"] == {}, verdict["out_of_order_keys"]
    assert set(verdict["delivery_states"]) == {DeliveryState.SUCCEEDED.value}, verdict


async def test_bus_deliveries_survive_kill_9_of_workers(
    make_bus_rig: Callable[..., Any], kind: str, size: Size, results: Results
) -> None:
    rig: BusRig = await make_bus_rig(kind)
    rng = random.Random(7)
    workers = [rig.start_worker() for _ in range(3)]
    for w in workers:
        await rig.wait_registered(w)
    for _ in range(size.pick(2, 15)):
        for _ in range(size.pick(15, 60)):
            await rig.publish_batch(rng)
        floor = len(rig.handled()) + 30
        await wait_until(lambda f=floor: len(rig.handled()) >= f, 60, message="progress")
        victim = rig.busiest()
        assert victim is not None
        rig.kill(victim)
        await rig.wait_registered(rig.start_worker())
    for _ in range(size.pick(10, 40)):
        await rig.publish_batch(rng)
    await wait_until(rig.drained, size.pick(90, 600), interval=0.3, message="every delivery")
    await wait_until(
        lambda: _all_succeeded(rig), 30, interval=0.3, message="deliveries to be recorded"
    )
    await _check(
        rig,
        results,
        "bus_kill9",
        "3 worker processes; the one with the most handled events is kill -9ed and replaced "
        "while batches of keyed events keep being published",
    )


async def _all_succeeded(rig: BusRig) -> bool:
    for s in SUBSCRIPTIONS:
        for d in await rig.app.bus.deliveries(s, limit=1_000_000):
            if d.state is not DeliveryState.SUCCEEDED:
                return False
    return True


async def _restart_scenario(
    rig: BusRig, size: Size, results: Results, restart: Callable[[], None], notes: str
) -> None:
    rng = random.Random(11)
    workers = [rig.start_worker() for _ in range(2)]
    for w in workers:
        await rig.wait_registered(w)
    stop = asyncio.Event()

    async def produce() -> None:
        while not stop.is_set():
            await rig.publish_batch(rng)
            await asyncio.sleep(0.02)

    producer = asyncio.create_task(produce())
    for _ in range(size.pick(1, 3)):
        floor = len(rig.handled()) + 60
        await wait_until(lambda f=floor: len(rig.handled()) >= f, 60, message="load")
        t1 = time.time()
        await asyncio.to_thread(restart)
        await wait_until(
            lambda t=t1: any(e["t"] > t for e in rig.handled()),
            60,
            message="handlers to run again after the restart",
        )
        floor = len(rig.acked) + 20
        await wait_until(lambda f=floor: len(rig.acked) >= f, 60, message="publishing again")
    stop.set()
    await producer
    assert all(w.poll() is None for w in workers), "a worker died during the restart"
    await wait_until(rig.drained, size.pick(90, 600), interval=0.3, message="every delivery")
    await wait_until(
        lambda: _all_succeeded(rig), 30, interval=0.3, message="deliveries to be recorded"
    )
    await _check(rig, results, "bus_store_restart", notes)


async def test_bus_survives_a_postgres_crash_restart(
    make_bus_rig: Callable[..., Any],
    pg_cluster: Callable[[], PgCluster],
    size: Size,
    results: Results,
) -> None:
    cluster = pg_cluster()
    rig: BusRig = await make_bus_rig("postgres", url=cluster.url)

    def restart() -> None:
        cluster.stop("immediate")
        time.sleep(3.0)  # the outage itself (longer than the lease): a duration, not a wait
        cluster.start()

    await _restart_scenario(
        rig, size, results, restart, "private cluster, pg_ctl -m immediate, down 3 s"
    )


async def test_bus_survives_a_redis_kill_9_and_restart(
    make_bus_rig: Callable[..., Any],
    redis_server: Callable[..., RedisServer],
    size: Size,
    results: Results,
) -> None:
    server = redis_server(appendfsync="always")
    rig: BusRig = await make_bus_rig("redis", url=server.url)

    def restart() -> None:
        server.kill()
        time.sleep(3.0)  # the outage itself (longer than the lease): a duration, not a wait
        server.start()

    await _restart_scenario(
        rig, size, results, restart, "private redis-server, AOF always, kill -9, down 3 s"
    )
