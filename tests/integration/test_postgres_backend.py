"""PostgreSQL backend behaviour beyond the contract suite: plans, batches, concurrency, wake-ups,
verbatim strings and retention."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from conveyor.backends.common import matches_any
from conveyor.backends.postgres import PostgresFactory
from conveyor.backends.postgres.backend import PostgresBackend
from conveyor.backends.postgres.statements import like_patterns, queries
from conveyor.domain.job import JobFilter
from conveyor.domain.states import JobState
from conveyor.errors import BackendError

try:
    from .test_postgres_support import (
        URL,
        T,
        blocked_waiter,
        client,
        count_probes,
        job,
        migrated_factory,
        require_server,
        wait_until,
    )
except ImportError:  # tests/integration is not a package
    from test_postgres_support import (  # type: ignore[no-redef]
        URL,
        T,
        blocked_waiter,
        client,
        count_probes,
        job,
        migrated_factory,
        require_server,
        wait_until,
    )


@pytest.fixture
async def factory() -> AsyncIterator[PostgresFactory]:
    require_server()
    async with migrated_factory() as f:
        yield f


@pytest.fixture
async def backend(factory: PostgresFactory) -> AsyncIterator[PostgresBackend]:
    async with client(factory) as b:
        yield b


async def admin() -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(URL, autocommit=True)


# -- plans ------------------------------------------------------------------------------------
CLAIM_PARAMS = {
    "now": T,
    "queues": ["default"],
    "limit": 10,
    "worker": "w",
    "lease": 30.0,
    "patterns": None,
    "exclude": [],
}


async def _fill(schema: str, finished: int, queued: int, scheduled: int) -> None:
    """A table that looks lived-in: many finished jobs, some waiting, some scheduled later."""
    async with await admin() as conn:
        await conn.execute(
            f"""INSERT INTO "{schema}".jobs
                    (id, task, queue, state, payload, priority, run_at, created_at, finished_at)
                SELECT lpad(to_hex(i), 32, '0'), 'tasks.work', 'default',
                       CASE WHEN i <= %(f)s THEN 'completed'
                            WHEN i <= %(f)s + %(q)s THEN 'queued' ELSE 'scheduled' END,
                       '\\x00', i %% 5,
                       CASE WHEN i <= %(f)s + %(q)s THEN %(t)s ELSE %(t)s + i END,
                       %(t)s,
                       CASE WHEN i <= %(f)s THEN %(t)s END
                FROM generate_series(1, %(f)s + %(q)s + %(s)s) AS i""",
            {"f": finished, "q": queued, "s": scheduled, "t": T},
        )
        await conn.execute(f'ANALYZE "{schema}".jobs')


async def explain(schema: str, name: str, params: dict[str, Any]) -> str:
    async with await admin() as conn:
        cur = await conn.execute("EXPLAIN " + queries(schema)[name], params)
        return "\n".join(r[0] for r in await cur.fetchall())


async def test_claim_is_an_index_scan_on_the_partial_index(factory: PostgresFactory) -> None:
    await _fill(factory.schema, finished=50_000, queued=500, scheduled=5_000)
    plan = await explain(factory.schema, "claim", CLAIM_PARAMS)
    print(plan)
    assert "Index Scan using jobs_claim_idx" in plan
    assert "Seq Scan on jobs" not in plan
    assert "LockRows" in plan  # FOR UPDATE SKIP LOCKED inside the materialized CTE
    stage = await explain(factory.schema, "stage", {"now": T})
    print(stage)
    assert "Seq Scan on jobs" not in stage
    # The time bounds are index conditions: future jobs are never scanned by a claim.
    assert "Index Cond: (run_at <= " in stage
    assert "Index Cond: ((expires_at IS NOT NULL) AND (expires_at <= " in stage


async def test_claim_never_returns_more_than_the_limit_in_strict_order(
    backend: PostgresBackend,
) -> None:
    jobs = [job(priority=p, run_at=T - r) for p in (0, 5, 9) for r in (3, 1, 2)]
    await backend.enqueue(jobs, now=T)
    expected = sorted(jobs, key=lambda j: (-j.priority, j.run_at or T, j.id))
    got: list[str] = []
    for _ in range(4):
        claimed = await backend.claim("w", ["default"], 4, 30, T)
        assert len(claimed) <= 4
        got += [c.id for c in claimed]
    assert got == [j.id for j in expected]


# -- batches ----------------------------------------------------------------------------------
async def test_bulk_enqueue_of_5000_jobs_in_one_call(backend: PostgresBackend) -> None:
    jobs = [job(payload=bytes([i % 256]) * 100, priority=i % 3) for i in range(5000)]
    started = time.perf_counter()
    results = await backend.enqueue(jobs, now=T)
    elapsed = time.perf_counter() - started
    print(f"5000 jobs in one enqueue call: {elapsed * 1000:.0f} ms")
    assert [r.id for r in results] == [j.id for j in jobs]
    assert all(r.created and r.state is JobState.QUEUED for r in results)
    [row] = await backend.count_jobs()
    assert row.count == 5000
    assert elapsed < 10


async def test_bulk_enqueue_with_keys_and_duplicates(backend: PostgresBackend) -> None:
    first = [job(idempotency_key=f"k{i}") for i in range(2000)]
    await backend.enqueue(first, now=T)
    again = [job(idempotency_key=f"k{i}") for i in range(1000, 3000)]
    results = await backend.enqueue(again, now=T)
    assert [r.created for r in results] == [False] * 1000 + [True] * 1000
    assert [r.id for r in results[:1000]] == [j.id for j in first[1000:]]


async def test_claim_a_batch_of_fifty(backend: PostgresBackend) -> None:
    await backend.enqueue([job() for _ in range(120)], now=T)
    sizes = [len(await backend.claim("w", ["default"], 50, 30, T)) for _ in range(4)]
    assert sizes == [50, 50, 20, 0]


# -- concurrency ------------------------------------------------------------------------------
async def test_concurrent_clients_never_claim_the_same_job(factory: PostgresFactory) -> None:
    total = 1500
    async with client(factory) as producer:
        await producer.enqueue([job(priority=i % 4) for i in range(total)], now=T)

    async def drain(name: str) -> list[str]:
        got: list[str] = []
        async with client(factory) as b:
            while True:
                claimed = await b.claim(name, ["default"], 7, 30, T)
                if not claimed:
                    return got
                for c in claimed:
                    assert await b.complete(c.id, c.fence, None, T)
                got += [c.id for c in claimed]

    results = await asyncio.gather(*(drain(f"w{i}") for i in range(6)))
    ids = [i for r in results for i in r]
    assert len(ids) == len(set(ids)) == total
    assert sum(1 for r in results if r) > 1  # the work really was shared


_WORKER_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from conveyor.backends import factory_from_url

    async def main():
        factory = factory_from_url(sys.argv[1], schema=sys.argv[2])
        backend = factory.create()
        await backend.open()
        got = []
        while True:
            claimed = await backend.claim(sys.argv[3], ["default"], 5, 30, 1_700_000_000.0)
            if not claimed:
                break
            for c in claimed:
                await backend.complete(c.id, c.fence, None, 1_700_000_000.0)
            got += [c.id for c in claimed]
        await backend.close()
        print(json.dumps(got))

    asyncio.run(main())
    """
)


async def test_concurrent_processes_never_claim_the_same_job(
    backend: PostgresBackend, factory: PostgresFactory
) -> None:
    total = 1200
    await backend.enqueue([job() for _ in range(total)], now=T)
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _WORKER_SCRIPT,
            URL,
            factory.schema,
            f"p{i}",
            stdout=subprocess.PIPE,
        )
        for i in range(4)
    ]
    outputs = [await p.communicate() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    ids = [i for out, _ in outputs for i in json.loads(out)]
    assert len(ids) == len(set(ids)) == total


async def test_concurrent_enqueues_of_one_key_store_one_job(factory: PostgresFactory) -> None:
    async def enqueue_once() -> tuple[str, bool]:
        async with client(factory) as b:
            [r] = await b.enqueue([job(idempotency_key="only-once")], now=T)
            return r.id, r.created

    results = await asyncio.gather(*(enqueue_once() for _ in range(8)))
    assert sum(created for _, created in results) == 1
    assert len({job_id for job_id, _ in results}) == 1


# -- verbatim strings -------------------------------------------------------------------------
NASTY = [
    "it's",
    'say "hi"',
    "Robert'); DROP TABLE jobs;--",
    "日本語のタスク",
    "emoji 🚀",
    "100% sure",
    "under_score",
    "back\\slash",
    "$1 $$ %s %(x)s {schema}",
]


async def test_names_and_keys_are_stored_verbatim(backend: PostgresBackend) -> None:
    jobs = [
        job(task=s, queue=s, idempotency_key=s, trace_id=s, metadata={s: s}, parents=(s,))
        for s in NASTY
    ]
    await backend.enqueue(jobs, now=T)
    for s, j in zip(NASTY, jobs, strict=True):
        record = await backend.get_job(j.id)
        assert record is not None
        assert (record.task, record.queue, record.idempotency_key) == (s, s, s)
        assert record.metadata == {s: s} and record.parents == (s,)
        claimed = await backend.claim("w", [s], 5, 30, T, tasks=[s])
        assert [c.id for c in claimed] == [j.id]
    assert {row.queue for row in await backend.count_jobs()} == set(NASTY)
    [again] = await backend.enqueue([job(idempotency_key=NASTY[2])], now=T)
    assert not again.created


@pytest.mark.parametrize(
    ("pattern", "names"),
    [
        ("a%b", ["a%b", "axb", "a%%b"]),
        ("a_b", ["a_b", "axb"]),
        ("a*", ["a", "ab", "a%", "b"]),
        ("*\\*", ["x\\", "\\", "x\\y"]),
        ("mail.*.send", ["mail.x.send", "mail..send", "mailxsend", "mail.x.sendx"]),
    ],
)
async def test_task_patterns_treat_like_wildcards_literally(
    backend: PostgresBackend, pattern: str, names: list[str]
) -> None:
    jobs = [job(task=n) for n in names]
    await backend.enqueue(jobs, now=T)
    claimed = await backend.claim("w", ["default"], 10, 30, T, tasks=[pattern])
    expected = {j.id for j in jobs if matches_any(j.task, [pattern])}
    assert {c.id for c in claimed} == expected
    assert like_patterns([pattern]) is not None


# -- wake-ups ---------------------------------------------------------------------------------
# A waiter's fallback poll is set far beyond the tests' deadlines, so a waiter that returns in
# time can only have been woken by the notification (no latency threshold: speed is measured
# by `make bench`).
SLOW_POLL = 120.0


async def test_an_idle_waiter_wakes_on_a_notification_of_an_enqueue_elsewhere() -> None:
    require_server()
    async with (
        migrated_factory(poll_interval=SLOW_POLL) as factory,
        client(factory) as waiter,
        client(factory) as producer,
    ):
        for i in range(3):
            await waiter.wait_for_jobs([f"q{i}"], 0.01)  # starts the listener
            await wait_until(lambda: waiter.stats()["listening"], 10, message="LISTEN")
            before = waiter.stats()["notify_received"]
            task = await blocked_waiter(waiter, [f"q{i}"], timeout=SLOW_POLL)
            assert not task.done()  # nothing else touches this queue
            await producer.enqueue([job(queue=f"q{i}")])
            await asyncio.wait_for(task, 10.0)
            assert waiter.stats()["notify_received"] > before


async def test_polling_only_wakes_at_the_poll_interval() -> None:
    require_server()
    async with (
        migrated_factory(listen=False, poll_interval=0.2) as factory,
        client(factory) as waiter,
        client(factory) as producer,
    ):
        probes = count_probes(waiter)
        task = asyncio.create_task(waiter.wait_for_jobs(["default"], SLOW_POLL))
        await wait_until(lambda: probes, 10, message="the first check")
        await producer.enqueue([job()])
        await asyncio.wait_for(task, 10.0)  # woken by a later poll: nothing notifies
        assert len(probes) >= 2
        assert waiter.stats()["listening"] is False
        assert waiter.stats()["notify_received"] == 0


async def test_wait_for_finish_wakes_on_completion_elsewhere() -> None:
    require_server()
    async with (
        migrated_factory(poll_interval=SLOW_POLL) as factory,
        client(factory) as a,
        client(factory) as b,
    ):
        new = job()
        await a.enqueue([new])
        [claimed] = await b.claim("w", ["default"], 1, 30)
        reads: list[int] = []
        get_job = a.get_job

        async def counting(job_id: str) -> Any:
            reads.append(1)
            return await get_job(job_id)

        a.get_job = counting  # type: ignore[method-assign]
        waiting = asyncio.create_task(a.wait_for_finish(new.id, SLOW_POLL))
        # Past its first quick re-reads, the waiter backs off towards the (slow) poll cap.
        await wait_until(lambda: len(reads) >= 4 and a.stats()["listening"], 10)
        assert await b.complete(claimed.id, claimed.fence, b"done")
        record = await asyncio.wait_for(waiting, 10.0)
        assert record is not None and record.state is JobState.COMPLETED


async def test_notifications_are_rate_limited_per_queue_with_a_trailing_one() -> None:
    require_server()
    async with (
        migrated_factory(poll_interval=SLOW_POLL) as factory,
        client(factory) as waiter,
        client(factory) as producer,
    ):
        for _ in range(30):
            await producer.enqueue([job()])
        stats = producer.stats()
        assert stats["notify_suppressed"] > 0
        assert stats["notify_sent"] < 30
        # The last enqueue of the burst was suppressed; its trailing notification still
        # reaches an idle waiter on a queue that has work only from that burst.
        assert (await waiter.claim("w", ["default"], 100, 30)) != []
        await waiter.wait_for_jobs(["default"], 0.01)  # starts the listener
        await wait_until(lambda: waiter.stats()["listening"], 10, message="LISTEN")
        task = await blocked_waiter(waiter, ["default"], timeout=SLOW_POLL)
        await producer.enqueue([job()])
        await producer.enqueue([job()])  # inside the window: suppressed, trailing later
        await asyncio.wait_for(task, 10.0)


# -- retention and storage --------------------------------------------------------------------
async def test_delete_jobs_works_in_batches_and_frees_keys(
    backend: PostgresBackend, factory: PostgresFactory
) -> None:
    jobs = [job(idempotency_key=f"k{i}") for i in range(1200)]
    await backend.enqueue(jobs, now=T)
    claimed = await backend.claim("w", ["default"], 1200, 30, T)
    for c in claimed:
        await backend.complete(c.id, c.fence, None, T + 1)
    assert await backend.delete_jobs(JobFilter(finished_before=T + 2), limit=1000) == 1000
    assert await backend.delete_jobs(JobFilter(finished_before=T + 2)) == 200
    async with await admin() as conn:
        cur = await conn.execute(f'SELECT count(*) FROM "{factory.schema}".idempotency_keys')
        assert await cur.fetchone() == (0,)
    [again] = await backend.enqueue([job(idempotency_key="k1")], now=T + 3)
    assert again.created


async def test_jobs_table_has_the_documented_autovacuum_settings(
    factory: PostgresFactory,
) -> None:
    async with await admin() as conn:
        cur = await conn.execute(
            "SELECT reloptions FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = 'jobs'",
            (factory.schema,),
        )
        row = await cur.fetchone()
    assert row is not None
    options = dict(o.split("=") for o in row[0])
    assert options["autovacuum_vacuum_scale_factor"] == "0.01"
    assert options["autovacuum_vacuum_cost_delay"] == "0"
    assert options["fillfactor"] == "80"


async def test_heartbeats_and_progress_are_hot_updates(
    backend: PostgresBackend, factory: PostgresFactory
) -> None:
    """Lease extensions and progress touch no indexed column, so PostgreSQL can rewrite the
    row in place (HOT) instead of adding entries to every index."""
    await backend.enqueue([job() for _ in range(5)], now=T)
    claimed = await backend.claim("w", ["default"], 5, 30, T)
    sql = queries(factory.schema)
    stats = (
        "SELECT pg_stat_get_xact_tuples_updated(%(t)s::regclass), "
        "pg_stat_get_xact_tuples_hot_updated(%(t)s::regclass)"
    )
    table = {"t": f'"{factory.schema}".jobs'}
    heartbeat = {
        "now": T + 1,
        "lease": 30.0,
        "ids": [c.id for c in claimed],
        "fences": [c.fence for c in claimed],
    }
    async with await admin() as conn:

        async def counts() -> tuple[int, int]:
            cur = await conn.execute(stats, table)
            row = await cur.fetchone()
            assert row is not None
            return int(row[0]), int(row[1])

        async with conn.transaction():
            before = await counts()
            await conn.execute(sql["heartbeat"], heartbeat)
            after = await counts()
            assert (after[0] - before[0], after[1] - before[1]) == (5, 5)
        async with conn.transaction():
            before = await counts()
            for c in claimed:
                await conn.execute(
                    sql["set_progress"], {"id": c.id, "fence": c.fence, "progress": b"50%"}
                )
            after = await counts()
            assert (after[0] - before[0], after[1] - before[1]) == (5, 5)


async def test_a_handler_connection_from_the_pool(backend: PostgresBackend) -> None:
    async with backend.connection() as conn:
        cur = await conn.execute("SELECT 1")
        assert await cur.fetchone() == (1,)
        assert conn.autocommit


async def test_concurrent_completions_share_statements(backend: PostgresBackend) -> None:
    await backend.enqueue([job() for _ in range(200)], now=T)
    claimed = await backend.claim("w", ["default"], 200, 30, T)
    stale = claimed[0]
    results = await asyncio.gather(
        *(backend.complete(c.id, c.fence, c.id.encode(), T + 1) for c in claimed),
        backend.complete(stale.id, stale.fence + 7, None, T + 1),  # a fence never issued
        backend.complete(stale.id, stale.fence, b"again", T + 1),  # a repeat: answered alike
    )
    assert results == [True] * 200 + [False, True]
    stats = backend.stats()
    assert stats["complete_items"] == 202
    assert stats["complete_batches"] < 20
    for c in claimed[:5]:
        record = await backend.get_job(c.id)
        assert record is not None and record.result == c.id.encode()
        assert record.finished_at == T + 1


async def test_concurrent_enqueues_share_statements_but_fail_alone(
    backend: PostgresBackend,
) -> None:
    calls = [[job(), job()] for _ in range(30)]
    bad = [job(task="nul\x00byte")]
    keyed = [[job(idempotency_key="shared")] for _ in range(3)]
    results = await asyncio.gather(
        *(backend.enqueue(c, now=T) for c in calls),
        backend.enqueue(bad, now=T),
        *(backend.enqueue(c, now=T) for c in keyed),
        return_exceptions=True,
    )
    for call, result in zip(calls, results[:30], strict=True):
        assert isinstance(result, list)
        assert [r.id for r in result] == [j.id for j in call] and all(r.created for r in result)
    assert isinstance(results[30], BackendError)
    shared = [r for r in results[31:] if isinstance(r, list)]
    assert len(shared) == 3 and sum(r[0].created for r in shared) == 1
    assert len({r[0].id for r in shared}) == 1
    assert backend.stats()["enqueue_batches"] < 34
    assert await backend.get_job(bad[0].id) is None
    assert sum(row.count for row in await backend.count_jobs()) == 61
