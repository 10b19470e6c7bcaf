"""Micro-benchmark of the Redis backend: one Python process against a private redis-server.

Not run by default (it takes a minute and its numbers only mean something on a quiet machine):

    CONVEYOR_BENCH=1 .venv/bin/pytest tests/integration/test_redis_bench.py -s

Prints, per operation, the best rate over the trials, and the client and Redis CPU time per
job (less sensitive to other load on the box than the rate). A PING loop on the same connection
is the baseline: on a loaded box every rate falls with it.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from conveyor.backends.redis import RedisBackend, RedisFactory
from conveyor.domain.ids import new_job_id
from conveyor.domain.job import NewJob

try:
    from .test_redis_support import private_server
except ImportError:  # tests/integration is not a package
    from test_redis_support import private_server  # type: ignore[no-redef]

pytestmark = pytest.mark.skipif(
    not os.environ.get("CONVEYOR_BENCH"), reason="set CONVEYOR_BENCH=1 to run the benchmark"
)

TRIALS = int(os.environ.get("CONVEYOR_BENCH_TRIALS", "3"))
Row = tuple[float, float, float]  # jobs/s, client CPU us/job, Redis CPU us/job


def jobs(n: int, size: int = 100) -> list[NewJob]:
    return [
        NewJob(id=new_job_id(), task="bench.task", queue="q", payload=b"x" * size) for _ in range(n)
    ]


async def measure(raw: aioredis.Redis, n: int, work: Callable[[], Awaitable[None]]) -> Row:
    async def server_cpu() -> float:
        info = await raw.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    s0, c0, t0 = await server_cpu(), time.process_time(), time.perf_counter()
    await work()
    t1, c1, s1 = time.perf_counter(), time.process_time(), await server_cpu()
    return n / (t1 - t0), (c1 - c0) / n * 1e6, (s1 - s0) / n * 1e6


async def one_trial(b: RedisBackend, raw: aioredis.Redis, out: dict[str, list[Row]]) -> None:
    def add(label: str, row: Row) -> None:
        out.setdefault(label, []).append(row)

    async def ping() -> None:
        for _ in range(2000):
            await raw.ping()

    add("PING round trip (baseline)", await measure(raw, 2000, ping))
    await raw.flushall()
    single = jobs(3000)

    async def enqueue_one() -> None:
        for j in single:
            await b.enqueue([j])

    add("enqueue, 1 job per call", await measure(raw, 3000, enqueue_one))
    for size in (50, 1000):
        batches = [jobs(size) for _ in range(max(1, 30_000 // size))]

        async def enqueue_batch(batches: list[list[NewJob]] = batches) -> None:
            for batch in batches:
                await b.enqueue(batch)

        add(f"enqueue, {size} jobs per call", await measure(raw, 30_000, enqueue_batch))

    for limit in (1, 50):
        for concurrent in (False, True):
            await raw.flushall()
            for _ in range(10):
                await b.enqueue(jobs(1000))

            async def drain(limit: int = limit, concurrent: bool = concurrent) -> None:
                while got := await b.claim("w", ["q"], limit, 30):
                    if concurrent:
                        await asyncio.gather(*(b.complete(c.id, c.fence, b"r") for c in got))
                    else:
                        for c in got:
                            await b.complete(c.id, c.fence, b"r")

            how = ", completes concurrent" if concurrent else ""
            add(f"claim {limit} + complete each{how}", await measure(raw, 10_000, drain))

    await raw.flushall()
    for _ in range(10):
        await b.enqueue(jobs(1000))

    async def fused() -> None:
        [c] = await b.claim("w", ["q"], 1, 30)
        while True:
            _, nxt = await b.complete_and_claim(c.id, c.fence, b"r", "w", ["q"], 1, 30)
            if not nxt:
                return
            c = nxt[0]

    add("complete_and_claim, 1 at a time", await measure(raw, 10_000, fused))


@pytest.mark.parametrize(
    "server_args",
    [(), ("--appendonly", "yes", "--appendfsync", "everysec")],
    ids=["no-persistence", "aof-everysec"],
)
async def test_redis_backend_rates(tmp_path: Path, server_args: tuple[str, ...]) -> None:
    async with private_server(tmp_path, *server_args) as server:
        backend = RedisFactory(server.url, prefix="bench").create()
        raw = server.client()
        out: dict[str, list[Row]] = {}
        try:
            await backend.open()
            for _ in range(TRIALS):
                await one_trial(backend, raw, out)
        finally:
            await backend.close()
            await raw.aclose()
    load = os.getloadavg()[0]
    print(f"\nredis-server {' '.join(server_args) or '(no persistence)'}; load average {load:.1f}")
    print(f"  {'':44s} {'jobs/s':>9s} {'client CPU':>11s} {'Redis CPU':>10s}")
    for label, rows in out.items():
        rate = max(r[0] for r in rows)
        client = min(r[1] for r in rows)
        redis_cpu = min(r[2] for r in rows)
        print(f"  {label:44s} {rate:9,.0f} {client:9.1f}us {redis_cpu:8.1f}us")
