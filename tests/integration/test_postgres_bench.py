"""Throughput of the PostgreSQL backend's hot paths (opt-in: ``CONVEYOR_BENCH=1``).

    CONVEYOR_BENCH=1 .venv/bin/pytest tests/integration/test_postgres_bench.py -s

Prints jobs per second for: single enqueue (one caller, and 50 concurrent callers sharing
statements), bulk enqueue (50 and 1000 per call), and
claim + complete with batches of 1 and 50 (completions awaited one by one, and concurrently
as a worker with free slots does, which lets them share statements). The numbers depend on the
machine: record the CPU, the load and the server's fsync settings with them.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from conveyor.backends.postgres.backend import PostgresBackend

try:
    from .test_postgres_support import client, job, migrated_factory, require_server
except ImportError:  # tests/integration is not a package
    from test_postgres_support import (  # type: ignore[no-redef]
        client,
        job,
        migrated_factory,
        require_server,
    )

pytestmark = pytest.mark.skipif(
    not os.environ.get("CONVEYOR_BENCH"), reason="benchmark: set CONVEYOR_BENCH=1 to run"
)


def rate(label: str, count: int, seconds: float) -> None:
    print(f"{label:<44} {count / seconds:>9.0f} jobs/s   ({seconds / count * 1e6:>7.0f} µs/job)")


async def drain(backend: PostgresBackend, batch: int, concurrent: bool, total: int) -> int:
    done = 0
    while done < total:
        claimed = await backend.claim("bench", ["default"], batch, 60)
        if not claimed:
            break
        if concurrent:
            await asyncio.gather(*(backend.complete(c.id, c.fence, None) for c in claimed))
        else:
            for c in claimed:
                await backend.complete(c.id, c.fence, None)
        done += len(claimed)
    return done


async def test_throughput() -> None:
    require_server()
    print(f"\nload average: {os.getloadavg()}")
    async with migrated_factory() as factory, client(factory) as backend:
        # Calibration: what one round trip and one committed one-row insert cost here.
        async with backend.connection() as conn:
            await conn.execute(f'CREATE TABLE "{factory.schema}".probe (v int)')
            started = time.perf_counter()
            for _ in range(200):
                await conn.execute("SELECT 1")
            rate("baseline: SELECT 1 round trips", 200, time.perf_counter() - started)
            started = time.perf_counter()
            for i in range(200):
                await conn.execute(f'INSERT INTO "{factory.schema}".probe VALUES (%s)', (i,))
            rate("baseline: one-row INSERT commits", 200, time.perf_counter() - started)
        n = 2000
        jobs = [job(payload=b"x" * 100) for _ in range(n)]
        started = time.perf_counter()
        for j in jobs:
            await backend.enqueue([j])
        rate("enqueue, 1 per call", n, time.perf_counter() - started)

        callers = [[job(payload=b"x" * 100)] for _ in range(n)]
        started = time.perf_counter()
        for start in range(0, n, 50):
            await asyncio.gather(*(backend.enqueue(c) for c in callers[start : start + 50]))
        rate("enqueue, 1 per call, 50 callers at once", n, time.perf_counter() - started)

        for size, calls in ((50, 100), (1000, 10)):
            batches = [[job(payload=b"x" * 100) for _ in range(size)] for _ in range(calls)]
            started = time.perf_counter()
            for b in batches:
                await backend.enqueue(b)
            rate(f"enqueue, {size} per call", size * calls, time.perf_counter() - started)

        for batch, concurrent, total in ((1, False, 2000), (50, False, 5000), (50, True, 20000)):
            started = time.perf_counter()
            count = await drain(backend, batch, concurrent, total)
            how = "completed together" if concurrent else "completed one by one"
            rate(f"claim {batch} + complete ({how})", count, time.perf_counter() - started)
        print(backend.stats())
