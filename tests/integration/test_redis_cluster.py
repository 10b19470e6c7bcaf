"""The Redis backend on a real Redis Cluster (``redis+cluster://``).

A private cluster of three masters with one replica each runs from ``redis-server`` on free
loopback ports (one per test module; ``tests/support/servers.py``). The tests check the key
layout (every key of a queue in one slot, queues spread over the shards), the operations over
several queues, the contract suite, and a fail-over under load: a master is killed with
``kill -9`` while a producer and a worker run, its replica is promoted, and no acknowledged
job is lost.

``CONVEYOR_CLUSTER=long`` runs the whole contract suite and a longer fail-over.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from conveyor import Conveyor, JobState
from conveyor.backends import factory_from_url
from conveyor.backends.capabilities import ReportsLoad
from conveyor.backends.redis.cluster import RedisClusterBackend
from conveyor.backends.redis.cluster_layout import queue_base, where_key
from conveyor.backends.redis.factory import RedisFactory
from conveyor.errors import ConfigurationError, ConveyorError
from conveyor.worker import Worker, WorkerConfig
from tests.acceptance.conftest import wait_until
from tests.contract._support import job
from tests.support.servers import RedisCluster

REPO = Path(__file__).resolve().parents[2]
LONG = os.environ.get("CONVEYOR_CLUSTER", "") == "long"
QUEUES = [f"q{i}" for i in range(12)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    try:
        servers = RedisCluster(tmp_path_factory.mktemp("cluster"), 3, 1).start()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture
async def factory(cluster: RedisCluster) -> AsyncIterator[RedisFactory]:
    made = factory_from_url(cluster.url, prefix=f"c{uuid4().hex[:10]}")
    assert isinstance(made, RedisFactory) and made.cluster
    try:
        yield made
    finally:
        await made.destroy()


@pytest.fixture
async def backend(factory: RedisFactory) -> AsyncIterator[RedisClusterBackend]:
    client = factory.create()
    assert isinstance(client, RedisClusterBackend)
    await client.open()
    try:
        yield client
    finally:
        await client.close()


async def test_every_key_of_a_queue_shares_one_slot_and_queues_spread(
    backend: RedisClusterBackend, cluster: RedisCluster
) -> None:
    jobs = [job(queue=q, idempotency_key=f"k{q}") for q in QUEUES for _ in range(3)]
    await backend.enqueue(jobs)
    claimed = await backend.claim("w", QUEUES, 12, 30.0)
    assert len(claimed) == 12
    for c in claimed[:6]:
        assert await backend.complete(c.id, c.fence, b"1")
    slots: dict[str, set[int]] = {}
    tag = "{" + backend.prefix + ":"
    for key in [k async for k in backend.client.scan_iter(match=tag + "*", count=1000)]:
        name = key.decode()
        inner = name[1 : name.index("}")]
        if ":w:" in inner:
            continue  # the where map: its own tags
        slots.setdefault(inner.split(":", 1)[1], set()).add(backend.client.keyslot(name))
    assert set(slots) == set(QUEUES)
    assert all(len(s) == 1 for s in slots.values()), slots  # one slot per queue
    by_slot = await backend.key_slots(QUEUES)
    assert all(slots[q] == {by_slot[q]} for q in QUEUES)
    masters = {cluster.port_of_slot(slot) for slot in by_slot.values()}
    assert len(set(by_slot.values())) == len(QUEUES)  # twelve queues, twelve slots
    assert len(masters) == 3, masters  # ... on all three shards
    # The where map, the registry and kv live under other tags.
    assert backend.client.keyslot(where_key(backend.prefix, jobs[0].id)) not in by_slot.values()
    assert queue_base(backend.prefix, "a{b}c") == "{" + backend.prefix + ":a%7Bb%7Dc}:"


async def test_operations_over_several_queues(factory: RedisFactory) -> None:
    """A worker consuming queues on every shard, counts, dead letters, the load, the worker
    registry and key-value state, through the app."""
    app = Conveyor(factory.url, backend_options={"prefix": factory.prefix})
    for q in QUEUES[:6]:
        app.queue(q)
    done: list[str] = []

    async def work(n: int) -> int:
        done.append(str(n))
        if n % 5 == 0:
            raise ValueError("five")
        return n

    tasks = {q: app.task(name=f"work.{q}", queue=q)(work) for q in QUEUES[:6]}
    handles = [await tasks[q].enqueue(i) for i in range(10) for q in QUEUES[:6]]
    backend = await app.backend()
    assert isinstance(backend, ReportsLoad)
    load = {x.queue: x for x in await app.inspect.load()}
    assert {q: load[q].ready for q in QUEUES[:6]} == dict.fromkeys(QUEUES[:6], 10)
    worker = Worker(app, WorkerConfig(burst=True, concurrency=8, scheduler=False))
    await asyncio.wait_for(worker.run(), 60)
    assert len(done) == 60
    counts = await app.inspect.counts()
    assert counts.total["completed"] == 48 and counts.total["failed"] == 12
    assert all(counts.by_queue[q]["failed"] == 2 for q in QUEUES[:6])
    dead = await app.dead_letters.list(limit=100)
    assert len(dead) == 12 and {d.record.queue for d in dead} == set(QUEUES[:6])
    ids = [d.record.id for d in dead]
    assert ids == sorted(ids, reverse=True)  # newest first, merged over the queues
    page = await app.dead_letters.list(limit=5, offset=5)
    assert [d.record.id for d in page] == ids[5:10]
    assert await app.dead_letters.retry_all() == 12
    assert (await app.inspect.counts()).total["queued"] == 12
    for handle in handles[:3]:
        info = await handle.info()
        assert info is not None and info.state in (JobState.COMPLETED, JobState.QUEUED)
    await backend.register_worker(worker.info())
    assert [w.id for w in await app.inspect.workers(include_stale=True)] == [worker.id]
    assert await backend.kv_swap("ns", "k", None, b"v")  # type: ignore[attr-defined]
    assert await backend.kv_get("ns", "k") == b"v"  # type: ignore[attr-defined]
    await app.close()


async def test_a_redis_url_at_a_cluster_node_says_what_to_use(cluster: RedisCluster) -> None:
    plain = factory_from_url(f"redis://127.0.0.1:{cluster.ports[0]}/0", prefix="x")
    client = plain.create()
    with pytest.raises(ConfigurationError, match=r"redis\+cluster://"):
        await client.open()
    await client.close()
    with pytest.raises(ConfigurationError, match="only database 0"):
        factory_from_url(f"redis+cluster://127.0.0.1:{cluster.ports[0]}/3").create()


async def test_the_event_bus_is_refused_on_a_cluster_with_a_clear_error(
    cluster: RedisCluster,
) -> None:
    """Bus deliveries would land outside every queue's slot, so a cluster client refuses the
    bus and streams instead of storing deliveries no worker claims."""
    factory = factory_from_url(f"redis+cluster://127.0.0.1:{cluster.ports[0]}/0", prefix="busx")
    client = factory.create()
    await client.open()
    try:
        with pytest.raises(ConfigurationError, match="not available on Redis Cluster"):
            await client.bus_subscriptions()  # type: ignore[attr-defined]
        with pytest.raises(ConfigurationError, match="not available on Redis Cluster"):
            await client.stream_version("account-1")  # type: ignore[attr-defined]
    finally:
        await client.close()


@pytest.mark.timeout(1500)
def test_the_contract_suite_passes_on_a_cluster() -> None:
    """``tests/contract -k redis`` with the ``redis`` kind on a private cluster
    (``CONVEYOR_TEST_REDIS_VIA=cluster``), in a child pytest: the transitions, fencing,
    leases and reads (every file with ``CONVEYOR_CLUSTER=long``). The differences by design
    are strict xfails (``tests/contract/conftest.py``)."""
    env = {**os.environ, "CONVEYOR_TEST_REDIS_VIA": "cluster"}
    env.pop("PYTEST_XDIST_WORKER", None)
    files = ["tests/contract"] if LONG else [
        f"tests/contract/{name}.py"
        for name in ("test_claim", "test_enqueue", "test_finish", "test_fencing", "test_leases",
                     "test_operations", "test_reading", "test_suspects")
    ] + ["tests/contract/capabilities"]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *files, "-k", "redis", "-q", "-p", "no:cacheprovider",
         "-n", "0"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )  # fmt: skip
    tail = done.stdout[-3000:] + done.stderr[-2000:]
    assert done.returncode == 0, tail
    assert " passed" in tail and not re.search(r"\b\d+ failed", tail), tail


@pytest.mark.timeout(600)
async def test_failover_under_load_loses_no_acknowledged_job(
    cluster: RedisCluster, factory: RedisFactory
) -> None:
    """A producer enqueues batches on queues of every shard while a worker runs them; the
    master serving one of the queues is killed (``kill -9``). Its replica takes over; calls
    fail for a moment and are retried. Every job whose enqueue was acknowledged completes."""
    app = Conveyor(
        factory.url,
        backend_options={"prefix": factory.prefix},
        lease=3.0,
        heartbeat_interval=0.5,
        max_stalls=10,
    )
    queues = QUEUES[:6]
    runs: Counter[str] = Counter()

    async def work() -> None:
        from conveyor import current_job

        runs[current_job().job_id] += 1
        await asyncio.sleep(0.01)

    tasks = [app.task(name=f"w.{q}", queue=q)(work) for q in queues]
    acknowledged: list[str] = []
    ambiguous = 0
    stop = asyncio.Event()
    duration = 20.0 if LONG else 6.0

    async def produce() -> None:
        nonlocal ambiguous
        i = 0
        while not stop.is_set():
            specs = [tasks[(i + k) % len(tasks)].call() for k in range(10)]
            try:
                handles = await app.enqueue_many(specs)
            except ConveyorError:
                ambiguous += len(specs)  # may or may not be stored: not acknowledged
            else:
                acknowledged.extend(h.id for h in handles)
            i += 1
            await asyncio.sleep(0.02)  # a steady rate, not a wait for anything

    config = WorkerConfig(queues=tuple(queues), concurrency=16, poll_interval=0.2, scheduler=False)
    worker = Worker(app, config)
    running = asyncio.create_task(worker.run())
    producer = asyncio.create_task(produce())
    try:
        await wait_until(lambda: len(runs) >= 100, 60, message="the worker to get going")
        backend = await app.backend()
        assert isinstance(backend, RedisClusterBackend)
        slot = (await backend.key_slots([queues[0]]))[queues[0]]
        victim = cluster.port_of_slot(slot)
        killed_at = time.monotonic()
        cluster.kill(victim)
        promoted = cluster.wait_promoted(victim)
        failover_s = time.monotonic() - killed_at
        await asyncio.sleep(duration)  # load goes on after the fail-over: a duration
        stop.set()
        await producer

        async def all_done() -> bool:
            for k in range(0, len(acknowledged), 50):
                chunk = acknowledged[k : k + 50]
                records = await asyncio.gather(*(backend.get_job(j) for j in chunk))
                if not all(r is not None and r.state is JobState.COMPLETED for r in records):
                    return False
            return True

        await wait_until(all_done, 120, interval=0.5, message="every acknowledged job to run")
    finally:
        stop.set()
        with contextlib.suppress(BaseException):
            await producer
        worker.stop()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(running, 30)
        await app.close()
    lost = [j for j in acknowledged if runs[j] == 0]
    twice = sum(1 for j in acknowledged if runs[j] > 1)
    print(
        f"\n[cluster failover] master {victim} killed, replica {promoted} promoted after "
        f"{failover_s:.1f}s; {len(acknowledged)} jobs acknowledged, {ambiguous} in failed "
        f"enqueues, {len(lost)} lost, {twice} run twice"
    )
    assert not lost
    assert len(acknowledged) >= 200
