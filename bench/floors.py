"""The bare-Python floor: Conveyor's storage operations per job, with no queue machinery.

``python -m bench.floors raw|backend BACKEND CONCURRENCY`` runs in Conveyor's ``.venv`` as the
"worker" of a processing cell (the cell pre-enqueued the jobs with Conveyor). It claims and
completes jobs until none is left, calling :func:`bench.recorder.record` for each job exactly
as Conveyor's no-op task does, so the cell measures it like any worker.

``raw``: the same driver with the same settings, sending the very SQL/Lua Conveyor sends (its
own query and script files, the same parameters and batching; on Redis over the same
pipelined connection, ``conveyor.backends.redis.pipe``): one claim for up to
``CONCURRENCY`` jobs, then the batch's completions (on Redis and PostgreSQL, whose backends
coalesce concurrent completions, one ``complete_many`` script or ``complete_batch`` statement
per batch; SQLite completes the batch in one transaction, as its writer thread does); at
concurrency 1, one fused complete-and-claim per job, as the worker does. Replies are decoded
only as far as the job id and fence. This is the floor (b) of issue 7.

``backend``: the same loop through Conveyor's backend object (``backend.claim`` /
``backend.complete``): it adds the backend layer (argument encoding, reply decoding into
``ClaimedJob``, error mapping, SQLite's writer thread) but none of the worker. The difference
between the two, and between ``backend`` and the real worker, says where time goes.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.recorder import record

QUEUE = "default"
LEASE = 30.0
WORKER_ID = f"floor:{os.getpid()}"
#: Conveyor's Redis writes carry a per-call token (stored with the outcome); so do the floor's.
TOKEN = "floor"

Job = tuple[str, int]  # (id, fence)
Claim = Callable[[int], Awaitable[list[Job]]]
Complete = Callable[[Job], Awaitable[Any]]
CompleteMany = Callable[[list[Job]], Awaitable[Any]]


async def drain(
    claim: Claim, complete: Complete, concurrency: int, complete_many: CompleteMany | None = None
) -> int:
    """Claim up to ``concurrency`` jobs, run and complete them all, until none is left.

    With ``complete_many``, a batch's completions go in one call (as a backend that coalesces
    concurrent completions sends them)."""
    done = 0

    async def one(job: Job) -> None:
        record(0.0)
        await complete(job)

    while True:
        jobs = await claim(concurrency)
        if not jobs:
            return done
        if complete_many is not None and len(jobs) > 1:
            for _ in jobs:
                record(0.0)
            await complete_many(jobs)
        elif len(jobs) == 1:
            await one(jobs[0])
        else:
            await asyncio.gather(*(one(job) for job in jobs))
        done += len(jobs)


# -- raw driver loops ---------------------------------------------------------------------------
async def redis_raw(url: str, prefix: str, concurrency: int) -> int:
    from conveyor.backends.redis.backend import COMPLETE_BATCH, PROMOTE_BATCH
    from conveyor.backends.redis.codec import CLAIM_WIDTH, decode_claimed, key_base, num
    from conveyor.backends.redis.connect import make_client
    from conveyor.backends.redis.pipe import pipe_for
    from conveyor.backends.redis.scripts import script

    client = make_client(url, 6)
    pipe = pipe_for(client, None)  # the transport Conveyor's backend sends its scripts over
    assert pipe is not None

    async def evalsha(sha: str, *args: Any) -> Any:
        return await pipe.execute("EVALSHA", sha, 1, base, *args)

    base = key_base(prefix)
    claim_script, complete_script = script("claim"), script("complete")
    many_script, fused_script = script("complete_many"), script("complete_claim")
    for s in (claim_script, complete_script, many_script, fused_script):
        await client.script_load(s.source)
    checked = False

    async def claim(limit: int) -> list[Job]:
        nonlocal checked
        args = [WORKER_ID, str(limit), num(LEASE), "", str(PROMOTE_BATCH), "1", QUEUE, "-1", "0"]
        claimed, _dead = await evalsha(claim_script.sha, *args)  # {claimed, dead-lettered}
        rows = [claimed[i : i + CLAIM_WIDTH] for i in range(0, len(claimed), CLAIM_WIDTH)]
        if rows and not checked:  # the reply layout is Conveyor's: check our reading of it once
            job = decode_claimed(rows[0])
            assert (job.id, job.fence) == (rows[0][0].decode(), int(rows[0][7])), "reply layout"
            checked = True
        return [(row[0], int(row[7])) for row in rows]

    async def complete(job: Job) -> Any:
        args = [job[0], str(job[1]), "0", b"", "", TOKEN]
        return await evalsha(complete_script.sha, *args)

    async def complete_many(jobs: list[Job]) -> Any:
        # Conveyor's backend sends at most COMPLETE_BATCH completions per script.
        for i in range(0, len(jobs), COMPLETE_BATCH):
            args: list[Any] = []
            for job_id, fence in jobs[i : i + COMPLETE_BATCH]:
                args += [job_id, str(fence), "0", b"", ""]
            await evalsha(many_script.sha, TOKEN, *args)

    async def one_at_a_time() -> int:
        # Conveyor's worker at concurrency 1 completes a job and claims the next in one script.
        done = 0
        jobs = await claim(1)
        while jobs:
            job_id, fence = jobs[0]
            record(0.0)
            args = [job_id, str(fence), "0", b"", TOKEN, WORKER_ID, "1", num(LEASE), ""]
            args += [str(PROMOTE_BATCH), "1", QUEUE, "-1", "0"]
            _done, rows, _dead = await evalsha(fused_script.sha, *args)
            jobs = [(rows[0], int(rows[7]))] if rows else []
            done += 1
        return done

    try:
        if concurrency == 1:
            return await one_at_a_time()
        return await drain(claim, complete, concurrency, complete_many)
    finally:
        await pipe.close()
        await client.aclose()


async def postgres_raw(url: str, schema: str, concurrency: int) -> int:
    from psycopg_pool import AsyncConnectionPool

    from conveyor.backends.postgres import PostgresSettings
    from conveyor.backends.postgres.statements import queries

    settings = PostgresSettings(url=url, schema=schema)
    sql = queries(schema)
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        settings.conninfo(),
        min_size=settings.pool_min,
        max_size=settings.pool_max,
        open=False,
        kwargs={"autocommit": True, "prepare_threshold": settings.prepare_threshold},
    )
    await pool.open()
    stage, claim_sql, complete_sql = sql["stage"], sql["claim"], sql["complete"]

    async def claim(limit: int) -> list[Job]:
        params = {
            "now": None,
            "queues": [QUEUE],
            "limit": limit,
            "worker": WORKER_ID,
            "lease": LEASE,
            "patterns": None,
            "exclude": [],
        }
        async with pool.connection() as conn, conn.pipeline():
            async with conn.transaction():
                await conn.execute(stage, {"now": None})
                cur = await conn.execute(claim_sql, params)
            rows = await cur.fetchall()
        return [(row[1], int(row[8])) for row in rows if row[-1] == "running"]

    async def complete(job: Job) -> Any:
        params = {
            "id": job[0],
            "fence": job[1],
            "result": None,
            "now": None,
            "channel": None,
            "repeat": True,
        }
        async with pool.connection() as conn:
            cur = await conn.execute(complete_sql, params)
            return await cur.fetchall()

    async def complete_many(jobs: list[Job]) -> Any:
        # Conveyor's backend coalesces concurrent completions into one statement.
        params = {
            "ids": [j[0] for j in jobs],
            "fences": [j[1] for j in jobs],
            "results": [None] * len(jobs),
            "nows": [None] * len(jobs),
            "channel": None,
        }
        async with pool.connection() as conn:
            cur = await conn.execute(sql["complete_batch"], params)
            return await cur.fetchall()

    async def one_at_a_time() -> int:
        # Conveyor's worker at concurrency 1 completes a job and claims the next in one
        # pipeline (complete, stage, claim: one round trip, one transaction).
        done = 0
        jobs = await claim(1)
        while jobs:
            record(0.0)
            job_id, fence = jobs[0]
            one = {
                "id": job_id,
                "fence": fence,
                "result": None,
                "now": None,
                "channel": None,
                "repeat": True,
            }
            params = {
                "now": None,
                "queues": [QUEUE],
                "limit": 1,
                "worker": WORKER_ID,
                "lease": LEASE,
                "patterns": None,
                "exclude": [],
            }
            async with pool.connection() as conn:
                async with conn.pipeline():
                    await conn.execute(complete_sql, one)
                    await conn.execute(stage, {"now": None})
                    cur = await conn.execute(claim_sql, params)
                rows = await cur.fetchall()
            jobs = [(row[1], int(row[8])) for row in rows if row[-1] == "running"]
            done += 1
        return done

    try:
        if concurrency == 1:
            return await one_at_a_time()
        return await drain(claim, complete, concurrency, complete_many)
    finally:
        await pool.close()


def sqlite_raw(path: str, concurrency: int) -> int:
    """Synchronous, one thread: a claim transaction, then one transaction completing the batch
    (what Conveyor's writer thread does when completions arrive together: group commit). At
    concurrency 1, one transaction per job completing it and claiming the next (the worker's
    fused ``complete_and_claim``)."""
    from conveyor.backends.sqlite.queries import Q
    from conveyor.backends.sqlite.schema import connect

    conn = connect(path, durability="process", busy_timeout=5.0)
    claim_sql = Q["claim_one"] if concurrency == 1 else Q["claim"]
    done = 0
    finished: list[Any] = []  # rows claimed, run, not yet completed
    try:
        while True:
            t = time.time()
            params = {"owner": WORKER_ID, "until": t + LEASE, "now": t, "queue": QUEUE}
            params.update(limit=concurrency, held=False)
            conn.execute("BEGIN IMMEDIATE")
            for row in finished:
                conn.execute(Q["complete"], (None, t, row[0], row[7]))
            conn.execute(Q["due_work"], {"now": t}).fetchall()
            rows = conn.execute(claim_sql, params).fetchall()
            conn.execute("COMMIT")
            done += len(finished)
            finished = []
            if not rows:
                return done
            for _ in rows:
                record(0.0)
            if concurrency == 1:
                finished = rows  # completed with the next claim
                continue
            conn.execute("BEGIN IMMEDIATE")
            now = time.time()
            for row in rows:
                conn.execute(Q["complete"], (None, now, row[0], row[7]))
            conn.execute("COMMIT")
            done += len(rows)
    finally:
        conn.close()


# -- the same loop through Conveyor's backend object ----------------------------------------
async def backend_loop(url: str, options: dict[str, Any], concurrency: int) -> int:
    from conveyor.backends import factory_from_url

    backend = factory_from_url(url, **options).create()
    await backend.open()

    async def claim(limit: int) -> list[Job]:
        jobs = await backend.claim(WORKER_ID, [QUEUE], limit, LEASE)
        return [(job.id, job.fence) for job in jobs]

    async def complete(job: Job) -> Any:
        return await backend.complete(job[0], job[1], None)

    async def one_at_a_time() -> int:
        # As the worker at concurrency 1: each completion claims the next job.
        done = 0
        jobs = await backend.claim(WORKER_ID, [QUEUE], 1, LEASE)
        while jobs:
            record(0.0)
            _, jobs = await backend.complete_and_claim(
                jobs[0].id, jobs[0].fence, None, WORKER_ID, [QUEUE], 1, LEASE
            )
            done += 1
        return done

    try:
        if concurrency == 1:
            return await one_at_a_time()
        return await drain(claim, complete, concurrency)
    finally:
        await backend.close()


def main(argv: list[str]) -> int:
    kind, backend, concurrency = argv[1], argv[2], int(argv[3])
    url, ns = os.environ["BENCH_URL"], os.environ["BENCH_NS"]
    if kind == "backend":
        options: dict[str, Any] = {"redis": {"prefix": ns}, "postgres": {"schema": ns}}.get(
            backend, {}
        )
        done = asyncio.run(backend_loop(url, options, concurrency))
    elif backend == "redis":
        done = asyncio.run(redis_raw(url, ns, concurrency))
    elif backend == "postgres":
        done = asyncio.run(postgres_raw(url, ns, concurrency))
    else:
        done = sqlite_raw(os.environ["BENCH_SQLITE_PATH"], concurrency)
    print(f"floor {kind} {backend} c={concurrency}: {done} jobs", file=sys.stderr)
    # Stay up like a worker until the cell stops us, so "the worker exited" means a failure.
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
