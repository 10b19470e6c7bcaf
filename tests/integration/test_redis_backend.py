"""The Redis backend against the shared server: layout, names, atomicity, pushes, errors.

The behaviour every backend shares is in ``tests/contract``; these tests cover what is
specific to Redis. Each test uses a fresh key prefix and deletes it afterwards.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from conveyor.backends import CancelOutcome, factory_from_url
from conveyor.backends.redis import RedisBackend, RedisFactory
from conveyor.domain.ids import new_job_id
from conveyor.domain.job import ErrorInfo, JobFilter, NewJob, WorkerInfo
from conveyor.domain.states import JobState
from conveyor.errors import ConfigurationError, MissingDependencyError, StorageUnavailableError

try:
    from .test_redis_support import (
        SHARED_URL,
        factory,
        fresh_prefix,
        key_slot,
        require_shared_server,
        wait_until,
    )
except ImportError:  # tests/integration is not a package
    from test_redis_support import (  # type: ignore[no-redef]
        SHARED_URL,
        factory,
        fresh_prefix,
        key_slot,
        require_shared_server,
        wait_until,
    )

T = 1_700_000_000.0


def job(task: str = "tasks.work", queue: str = "default", **fields: object) -> NewJob:
    fields.setdefault("id", new_job_id())
    fields.setdefault("payload", b"p")
    return NewJob(task=task, queue=queue, **fields)  # type: ignore[arg-type]


@pytest.fixture
async def rfactory() -> AsyncIterator[RedisFactory]:
    require_shared_server()
    f = factory()
    try:
        yield f
    finally:
        await f.destroy()


@pytest.fixture
async def backend(rfactory: RedisFactory) -> AsyncIterator[RedisBackend]:
    b = rfactory.create()
    await b.open()
    try:
        yield b
    finally:
        await b.close()


@pytest.fixture
async def raw() -> AsyncIterator[aioredis.Redis]:
    require_shared_server()
    client = aioredis.Redis.from_url(SHARED_URL)
    try:
        yield client
    finally:
        await client.aclose()


async def keys_of(raw: aioredis.Redis, f: RedisFactory) -> list[bytes]:
    pattern = f.base.replace("[", "\\[").replace("]", "\\]").replace("*", "\\*") + "*"
    return [k async for k in raw.scan_iter(match=pattern, count=1000)]


# -- factory -----------------------------------------------------------------------------------


def test_factory_from_url_builds_the_redis_factory() -> None:
    f = factory_from_url("redis://:secret@127.0.0.1:6379/0", prefix="app")
    assert isinstance(f, RedisFactory)
    assert f.base == "{app}:"
    assert f.describe() == {
        "url": "redis://:***@127.0.0.1:6379/0",
        "prefix": "app",
        "key_base": "{app}:",
    }


def test_missing_redis_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    with pytest.raises(MissingDependencyError) as info:
        RedisFactory("redis://127.0.0.1:6379/0")
    assert "pip install 'conveyor[redis]'" in str(info.value)


def test_bad_options_are_refused() -> None:
    with pytest.raises(ConfigurationError):
        RedisFactory(SHARED_URL, prefix="")
    with pytest.raises(ConfigurationError, match="invalid Redis URL"):
        RedisFactory("redis://127.0.0.1:notaport/0").create()


async def test_unreachable_server_is_one_clear_error() -> None:
    f = RedisFactory("redis://127.0.0.1:1/0", retries=1)
    b = f.create()
    try:
        with pytest.raises(
            StorageUnavailableError, match=r"cannot reach Redis at .*127\.0\.0\.1:1"
        ):
            await b.open()
    finally:
        await b.close()


async def test_an_existing_client_is_used_and_never_closed(raw: aioredis.Redis) -> None:
    f = RedisFactory(SHARED_URL, prefix=fresh_prefix(), client=raw)
    b = f.create()
    await b.open()
    new = job()
    await b.enqueue([new], now=T)
    await b.close()
    assert await raw.ping()  # still usable
    assert await raw.exists(f"{f.base}j:{new.id}") == 1
    await f.destroy()
    assert await raw.ping()
    assert await keys_of(raw, f) == []


async def test_destroy_removes_every_key_of_its_prefix_only(raw: aioredis.Redis) -> None:
    mine, theirs = factory(prefix="it*[x]" + fresh_prefix()), factory()
    for f in (mine, theirs):
        b = f.create()
        await b.enqueue([job(run_at=T + 10), job(idempotency_key="k")], now=T)
        await b.close()
    assert await keys_of(raw, mine) and await keys_of(raw, theirs)
    await mine.destroy()
    assert await keys_of(raw, mine) == []
    assert await keys_of(raw, theirs)
    await theirs.destroy()


# -- layout ------------------------------------------------------------------------------------


async def test_every_key_shares_one_hash_slot(
    backend: RedisBackend, rfactory: RedisFactory, raw: aioredis.Redis
) -> None:
    await backend.enqueue(
        [job(queue="a"), job(queue="b:{c}", priority=3), job(run_at=T + 5, expires_at=T + 9)],
        now=T,
    )
    await backend.enqueue([job(idempotency_key="k", queue="a")], now=T)
    [claimed] = await backend.claim("w", ["b:{c}"], 1, 30, now=T)
    await backend.register_worker(WorkerInfo("w", "h", 1, T, T, ("a",), 1))
    keys = await keys_of(raw, rfactory)
    assert len(keys) > 10
    assert {key_slot(k) for k in keys} == {key_slot(rfactory.base.encode())}
    assert claimed.queue == "b:{c}"


async def test_a_queued_job_is_a_small_listpack_hash(
    backend: RedisBackend, rfactory: RedisFactory, raw: aioredis.Redis
) -> None:
    new = job(payload=b"x" * 1000)
    await backend.enqueue([new], now=T)
    key = f"{rfactory.base}j:{new.id}"
    assert await raw.object("encoding", key) == b"listpack"
    assert await raw.get(f"{rfactory.base}d:{new.id}") == b"x" * 1000
    # Defaults are omitted: task, queue, state, run-at and created-at only.
    assert sorted(await raw.hkeys(key)) == [b"c", b"q", b"ra", b"s", b"t"]


STRANGE = [
    "émoji 🚀 queue",
    "with spaces and\ttabs",
    "{braces}",
    "}{",
    "colons:a:b:",
    "quotes ' \" `",
    "percent %3A %",
    "star * and [glob]?",
    "back\\slash",
]


@pytest.mark.parametrize("name", STRANGE)
async def test_strange_names_are_stored_verbatim(backend: RedisBackend, name: str) -> None:
    new = job(
        task=name,
        queue=name,
        idempotency_key=name,
        concurrency_key=name,
        trace_id=name,
        workflow_id=name,
        metadata={name: name},
        parents=(name,),
    )
    await backend.enqueue([new], now=T)
    record = await backend.get_job(new.id)
    assert record is not None
    assert (record.task, record.queue, record.idempotency_key) == (name, name, name)
    assert (record.concurrency_key, record.trace_id, record.workflow_id) == (name, name, name)
    assert record.metadata == {name: name} and record.parents == (name,)
    assert (await backend.enqueue([job(idempotency_key=name)], now=T))[0].id == new.id
    [row] = await backend.count_jobs()
    assert (row.queue, row.task, row.state, row.count) == (name, name, JobState.QUEUED, 1)
    listed = await backend.list_jobs(JobFilter(queue=name, task=name))
    assert [r.id for r in listed] == [new.id]
    [claimed] = await backend.claim(name, [name], 5, 30, now=T, tasks=[name])
    assert (claimed.id, claimed.task, claimed.queue) == (new.id, name, name)
    running = await backend.get_job(new.id)
    assert running is not None and running.lease_owner == name
    assert await backend.cancel(new.id, name, now=T + 1) is CancelOutcome.REQUESTED
    assert await backend.fail(
        new.id, claimed.fence, _error(name), retry_delay=None, now=T + 2,
        dead_letter_queue=name,
    ) is JobState.FAILED  # fmt: skip
    failed = await backend.get_job(new.id)
    assert failed is not None
    assert failed.dead_letter_queue == name and failed.cancel_reason == name
    assert failed.error is not None and failed.error.message == name


async def test_strange_prefix(raw: aioredis.Redis) -> None:
    f = factory(prefix="{a}:b %7D" + fresh_prefix())
    b = f.create()
    await b.open()
    try:
        new = job()
        await b.enqueue([new], now=T)
        assert (await b.get_job(new.id)) is not None
        keys = await keys_of(raw, f)
        assert keys and all(k.startswith(b"{%7Ba%7D:b %257D") for k in keys)
        assert len({key_slot(k) for k in keys}) == 1
    finally:
        await b.close()
        await f.destroy()
    assert await keys_of(raw, f) == []


# -- atomicity ---------------------------------------------------------------------------------


async def test_many_clients_never_share_a_job_and_every_job_finishes_once(
    backend: RedisBackend, rfactory: RedisFactory
) -> None:
    jobs = [job(priority=i % 4, queue=("a", "b")[i % 2]) for i in range(400)]
    for i in range(0, len(jobs), 100):
        await backend.enqueue(jobs[i : i + 100])
    clients = [rfactory.create() for _ in range(6)]
    done: list[str] = []

    async def work(client: RedisBackend, worker: str) -> None:
        while batch := await client.claim(worker, ["a", "b"], 7, 30):
            for c in batch:
                assert await client.complete(c.id, c.fence, worker.encode())
                done.append(c.id)

    try:
        await asyncio.gather(*(work(c, f"w{i}") for i, c in enumerate(clients)))
    finally:
        for c in clients:
            await c.close()
    assert sorted(done) == sorted(j.id for j in jobs)
    rows = await backend.count_jobs()
    assert {r.state for r in rows} == {JobState.COMPLETED}
    assert sum(r.count for r in rows) == 400


async def test_cancel_racing_complete_has_one_winner(
    backend: RedisBackend, rfactory: RedisFactory
) -> None:
    other = rfactory.create()
    try:
        for _ in range(30):
            new = job()
            await backend.enqueue([new])
            [c] = await backend.claim("w", ["default"], 1, 30)
            completed, outcome = await asyncio.gather(
                backend.complete(c.id, c.fence, b"r"), other.cancel(c.id, "race")
            )
            record = await backend.get_job(c.id)
            assert record is not None and completed
            assert record.state is JobState.COMPLETED
            assert outcome in (CancelOutcome.REQUESTED, CancelOutcome.NOT_CANCELLABLE)
    finally:
        await other.close()


async def test_concurrent_completions_share_scripts(backend: RedisBackend) -> None:
    await backend.enqueue([job() for _ in range(300)], now=T)
    claimed = await backend.claim("w", ["default"], 300, 30, T)
    stale = claimed[0]
    results = await asyncio.gather(
        *(backend.complete(c.id, c.fence, c.id.encode(), T + 1) for c in claimed),
        backend.complete(stale.id, stale.fence + 7, None, T + 1),  # a fence never issued
    )
    assert results == [True] * 300 + [False]
    stats = backend.stats()
    assert stats["complete_items"] == 301
    assert stats["complete_batches"] < 20
    for c in (*claimed[:3], claimed[-1]):
        record = await backend.get_job(c.id)
        assert record is not None and record.state is JobState.COMPLETED
        assert record.result == c.id.encode() and record.finished_at == T + 1
    rows = await backend.count_jobs()
    assert [(r.state, r.count) for r in rows] == [(JobState.COMPLETED, 300)]


async def test_bulk_enqueue_is_atomic_and_ordered(backend: RedisBackend) -> None:
    batch = [job(idempotency_key=f"k{i % 50}") for i in range(1000)]
    results = await backend.enqueue(batch, now=T)
    assert [r.created for r in results] == [True] * 50 + [False] * 950
    assert [r.id for r in results[50:]] == [batch[i % 50].id for i in range(50, 1000)]
    claimed = await backend.claim("w", ["default"], 100, 30, now=T)
    assert [c.id for c in claimed] == [j.id for j in batch[:50]]


# -- pushes ------------------------------------------------------------------------------------


async def test_cancellation_of_a_running_job_is_pushed(
    backend: RedisBackend, rfactory: RedisFactory
) -> None:
    producer = rfactory.create()
    received: list[str] = []
    first = asyncio.Event()

    async def listen() -> None:
        async for job_id in backend.subscribe_cancellations():
            received.append(job_id)
            first.set()

    listener = asyncio.create_task(listen())
    try:
        running, waiting = job(), job(run_at=T + 100)
        await backend.enqueue([running, waiting], now=T)
        [claimed] = await backend.claim("w", ["default"], 1, 30, now=T)
        # Only REQUESTED outcomes are pushed; wait until the subscription is live, then cancel.
        await backend._notify()._start()
        assert await producer.cancel(waiting.id, now=T) is CancelOutcome.CANCELLED
        assert await producer.cancel(claimed.id, "stop", now=T) is CancelOutcome.REQUESTED
        await asyncio.wait_for(first.wait(), 5.0)
        assert received == [claimed.id]
    finally:
        listener.cancel()
        await producer.close()


async def test_wait_for_finish_is_pushed_not_polled(
    backend: RedisBackend,
    rfactory: RedisFactory,
    raw: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from conveyor.backends.redis import backend as redis_backend

    # The safety re-read comes far too late to explain a wake-up within the test's deadline.
    monkeypatch.setattr(redis_backend, "FINISH_RECHECK", (120.0, 120.0))
    worker = rfactory.create()
    try:
        new = job()
        await backend.enqueue([new])
        [c] = await worker.claim("w", ["default"], 1, 30)
        waiter = asyncio.create_task(backend.wait_for_finish(new.id, 30))
        channel = f"{rfactory.base}done:{new.id}".encode()

        async def subscribed() -> bool:
            return dict(await raw.pubsub_numsub(channel)).get(channel, 0) == 1

        await wait_until(subscribed)
        assert await worker.complete(c.id, c.fence, b"ok")
        record = await asyncio.wait_for(waiter, 10)  # the pushed message woke it
        assert record is not None and record.result == b"ok"

        async def unsubscribed() -> bool:
            return not await subscribed()

        await wait_until(unsubscribed)
    finally:
        await worker.close()


# -- bad state ---------------------------------------------------------------------------------


async def test_a_foreign_key_of_the_wrong_type_is_named(raw: aioredis.Redis) -> None:
    f = factory()
    await raw.set(f"{f.base}idem", "not a hash")
    b = f.create()
    try:
        with pytest.raises(ConfigurationError, match=r"idem.*is a string.*choose\s+another prefix"):
            await b.open()
        # Found while running too (the key appeared after start-up).
        with pytest.raises(ConfigurationError, match="wrong type"):
            await b.enqueue([job(idempotency_key="k")], now=T)
    finally:
        await b.close()
        await f.destroy()


def _error(message: str) -> ErrorInfo:
    return ErrorInfo(code="error", type="RuntimeError", message=message, attempt=1, at=T)


async def test_valkey_scheme_is_accepted() -> None:
    require_shared_server()
    f = factory_from_url("valkey://127.0.0.1:6379/0", prefix=fresh_prefix())
    b = f.create()
    try:
        await b.open()
        assert (await b.enqueue([job()], now=T))[0].created
    finally:
        await b.close()
        await f.destroy()


async def test_key_value_state_compare_and_set(backend: RedisBackend) -> None:
    ns = "schedules: {odd} ns"
    assert await backend.kv_get(ns, "a") is None
    assert await backend.kv_list(ns) == {}
    assert await backend.kv_swap(ns, "a", None, b"1")
    assert not await backend.kv_swap(ns, "a", None, b"2")  # present, expected absent
    assert not await backend.kv_swap(ns, "a", b"0", b"2")  # wrong expectation
    assert await backend.kv_swap(ns, "a", b"1", b"")  # empty bytes are a value, not absence
    assert await backend.kv_get(ns, "a") == b""
    assert await backend.kv_swap(ns, "b:é", None, b"\x00\xff")
    assert await backend.kv_list(ns) == {"a": b"", "b:é": b"\x00\xff"}
    assert await backend.kv_list("other") == {}
    assert await backend.kv_swap(ns, "a", b"", None)  # delete
    assert not await backend.kv_swap(ns, "a", b"", None)
    assert await backend.kv_list(ns) == {"b:é": b"\x00\xff"}


async def test_concurrent_kv_swaps_have_one_winner(
    backend: RedisBackend, rfactory: RedisFactory
) -> None:
    others = [rfactory.create() for _ in range(5)]
    try:
        wins = await asyncio.gather(
            *(b.kv_swap("s", "tick", None, str(i).encode()) for i, b in enumerate(others))
        )
        assert sum(wins) == 1
    finally:
        for b in others:
            await b.close()


async def test_complete_and_claim_is_complete_then_claim(backend: RedisBackend) -> None:
    a, b, c = job(priority=2), job(priority=1), job()
    await backend.enqueue([a, b, c], now=T)
    [first] = await backend.claim("w", ["default"], 1, 30, now=T)
    done, nxt = await backend.complete_and_claim(
        first.id, first.fence, b"r", "w", ["default"], 5, 30, now=T + 1
    )
    assert done and [n.id for n in nxt] == [b.id, c.id]
    record = await backend.get_job(a.id)
    assert record is not None and record.state is JobState.COMPLETED and record.result == b"r"
    assert record.finished_at == T + 1
    assert nxt[0].lease_until == T + 31 and nxt[0].attempt == 1
    # A stale fence completes nothing, but the claim still happens.
    await backend.enqueue([d := job()], now=T)
    done, nxt = await backend.complete_and_claim(
        a.id, first.fence + 1, None, "w", ["default"], 1, 30, now=T + 2, tasks=["tasks.*"]
    )
    assert not done and [n.id for n in nxt] == [d.id]
    # A repeat of the completion that took effect answers as it did (and changes nothing).
    done, nxt = await backend.complete_and_claim(
        a.id, first.fence, None, "w", ["default"], 1, 30, now=T + 2
    )
    assert done and nxt == []
    assert (await backend.get_job(a.id)).result == b"r"  # type: ignore[union-attr]
    done, nxt = await backend.complete_and_claim(b.id, 99, None, "w", ["default"], 0, 30)
    assert not done and nxt == []


async def test_many_concurrent_calls_wait_for_a_connection_instead_of_failing(
    backend: RedisBackend,
) -> None:
    # redis-py's default pool raises past 100 connections; ours queues callers.
    results = await asyncio.gather(*(backend.enqueue([job()], now=T) for _ in range(500)))
    assert all(r[0].created for r in results)
    claimed = await backend.claim("w", ["default"], 500, 30, now=T)
    done = await asyncio.gather(*(backend.complete(c.id, c.fence, None, now=T) for c in claimed))
    assert len(done) == 500 and all(done)
