"""Scenario 3 (T5, T6): restart the store under load.

A private server the test owns (never the shared one): a PostgreSQL cluster crash-restarted
with ``pg_ctl -m immediate`` (fsync on, so it replays its WAL like after a crash), or a Redis
with AOF (``appendfsync always``) killed with ``kill -9`` and started again on its files.
Meanwhile a producer in the test process keeps enqueueing with client-chosen ids (an enqueue
that raised is *ambiguous*: it may or may not have been stored) and two worker processes run
the jobs. Every acknowledged enqueue must end completed; workers reconnect without help; the
only re-runs are of jobs whose lease ran out while the store was down.

SQLite has no server to restart: the file is the store, and killing every process that has it
open is scenario 1 (and ``tests/acceptance`` kills writers mid-transaction).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

from conveyor.domain.ids import new_job_id
from tests.support.servers import PgCluster, RedisServer

from .checker import COMPLETED
from .conftest import MakeRig, Results, Size
from .harness import Rig, now, wait_until

#: How long the store stays down: longer than the 2 s lease, so leases run out meanwhile.
DOWN_FOR = 3.0


def restart(stop: Callable[..., Any], start: Callable[[], Any], args: tuple[Any, ...]) -> None:
    """Stop the server, keep it down for :data:`DOWN_FOR` seconds, start it (in a thread)."""
    stop(*args)
    time.sleep(DOWN_FOR)  # the outage itself: a duration, not a wait for a condition
    start()


class Producer:
    """Enqueues small batches with known ids until stopped; sorts acked from ambiguous."""

    def __init__(self, rig: Rig, seed: int) -> None:
        self.rig = rig
        self.rng = random.Random(seed)
        self.stop = asyncio.Event()
        self.acked = 0
        self.failures: list[str] = []
        self.first_ok_after: dict[float, float] = {}
        self.task: asyncio.Task[None] | None = None

    def start(self) -> Producer:
        self.task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        work = self.rig.app.tasks["work"]
        while not self.stop.is_set():
            ids = [new_job_id() for _ in range(self.rng.randint(1, 10))]
            specs = [work.options(job_id=i).call(self.rng.randint(10, 80)) for i in ids]
            try:
                await asyncio.wait_for(self.rig.app.enqueue_many(specs), 20)
            except Exception as exc:  # noqa: BLE001 - the store is down: ambiguous
                self.rig.ambiguous.update(ids)
                self.failures.append(type(exc).__name__)
                await asyncio.sleep(0.05)  # back off before the next try
                continue
            self.rig.expect(ids, COMPLETED)
            self.acked += len(ids)
            t = now()
            for mark in self.first_ok_after:
                if self.first_ok_after[mark] == 0 and t > mark:
                    self.first_ok_after[mark] = t
            await asyncio.sleep(0.02)  # a steady trickle, not a flood

    async def finish(self) -> None:
        self.stop.set()
        assert self.task is not None
        await self.task


async def run_restarts(
    rig: Rig,
    results: Results,
    size: Size,
    restart: Callable[[], Any],
    notes: list[str],
) -> None:
    workers = [rig.start_worker(concurrency=8) for _ in range(2)]
    await rig.wait_started(*workers)
    producer = Producer(rig, 3).start()
    outages: list[dict[str, float]] = []
    for _ in range(size.pick(1, 4)):
        floor = rig.ledger.count("acked") + 150
        await wait_until(lambda f=floor: rig.ledger.count("acked") >= f, 60, message="load")
        t0 = now()
        await asyncio.to_thread(restart)
        t1 = now()
        rig.faults.add("outage", [], t0, t1)
        producer.first_ok_after[t1] = 0
        # Load must flow again: new runs start and new enqueues are acknowledged.
        await wait_until(
            lambda t=t1: any(e["t"] > t for e in rig.ledger.events("acked")),
            60,
            message="workers to complete jobs after the restart",
        )
        first_run = min(e["t"] for e in rig.ledger.events("acked") if e["t"] > t1)
        outages.append(
            {"down_s": round(t1 - t0, 3), "first_completion_after_s": round(first_run - t1, 3)}
        )
        await asyncio.sleep(size.pick(2.0, 10.0))  # keep the load running after the restart
    await producer.finish()
    for o, (mark, ok) in zip(outages, producer.first_ok_after.items(), strict=True):
        o["first_enqueue_after_s"] = round(ok - mark, 3) if ok else -1.0
    assert all(w.alive for w in workers), "a worker died during the restart"
    await rig.drain(timeout=size.pick(120, 600))
    codes = await rig.stop_all()
    verdict, _ = await rig.verdict(grace=rig.lease + 12.0)  # + the completion retry window
    results.write(
        "store_restart",
        rig.kind,
        {
            **verdict.summary(),
            "restarts": outages,
            "enqueue_errors_during_outage": len(producer.failures),
            "lease_s": rig.lease,
            "notes": notes,
        },
    )
    verdict.assert_clean()
    assert verdict.enqueued > 300 and verdict.lost == []
    assert set(verdict.duplicate_runs) <= {"outage"}, verdict.duplicate_runs
    assert set(codes.values()) == {0}, codes
    rig.logs_without_tracebacks()


async def test_postgres_crash_restart_under_load(
    make_rig: MakeRig, pg_cluster: Callable[[], PgCluster], size: Size, results: Results
) -> None:
    cluster = pg_cluster()
    rig = await make_rig("postgres", url=cluster.url, lease=2.0, heartbeat=0.5, max_stalls=5)
    await run_restarts(
        rig,
        results,
        size,
        lambda: restart(cluster.stop, cluster.start, ("immediate",)),
        [
            f"private cluster, fsync on, stopped with pg_ctl -m immediate (a crash), kept down "
            f"{DOWN_FOR}s (longer than the lease), started again (WAL replay)",
        ],
    )


async def test_redis_kill_9_and_restart_under_load(
    make_rig: MakeRig, redis_server: Callable[..., RedisServer], size: Size, results: Results
) -> None:
    server = redis_server(appendfsync="always")

    rig = await make_rig("redis", url=server.url, lease=2.0, heartbeat=0.5, max_stalls=5)
    await run_restarts(
        rig,
        results,
        size,
        lambda: restart(server.kill, server.start, ()),
        [
            f"private redis-server, appendonly yes, appendfsync always; kill -9, kept down "
            f"{DOWN_FOR}s (longer than the lease), started again on its AOF"
        ],
    )


async def test_sqlite_has_no_server_to_restart(results: Results) -> None:
    results.skip(
        "store_restart",
        "sqlite",
        "SQLite has no server process: the file is the store. Killing every process that has "
        "it open is scenario 1; a kill -9 mid-write is covered in tests/acceptance.",
    )
