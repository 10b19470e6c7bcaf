"""Blocking wake-ups of the Redis backend, on a private server so commands can be counted.

An idle worker blocks in ``BZPOPMIN`` on its queues' marker keys and sends nothing else; an
enqueue from another client wakes it within milliseconds; a delayed or backing-off job wakes
it when due, not on Redis's 100 ms timeout tick and not by polling.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conveyor.backends.redis import RedisBackend, RedisFactory
from conveyor.domain.ids import new_job_id
from conveyor.domain.job import ClaimedJob, ErrorInfo, NewJob

try:
    from .test_redis_support import (
        RedisServer,
        calls_delta,
        command_calls,
        private_server,
        wait_until,
    )
except ImportError:  # tests/integration is not a package
    from test_redis_support import (  # type: ignore[no-redef]
        RedisServer,
        calls_delta,
        command_calls,
        private_server,
        wait_until,
    )

#: A waiter's own timeout, far beyond the tests' deadlines: one that returns in time was woken
#: by the enqueue. (How fast is measured by `make bench`, not asserted here.)
LONG_WAIT = 120.0


def job(**fields: object) -> NewJob:
    fields.setdefault("id", new_job_id())
    fields.setdefault("payload", b"p")
    return NewJob(task="tasks.work", queue="q", **fields)  # type: ignore[arg-type]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    async with private_server(tmp_path) as s:
        yield s


@pytest.fixture
async def clients(server: RedisServer) -> AsyncIterator[tuple[RedisBackend, RedisBackend]]:
    f = RedisFactory(server.url, prefix="w")
    worker, producer = f.create(), f.create()
    await worker.open()
    await producer.open()
    try:
        yield worker, producer
    finally:
        await worker.close()
        await producer.close()


async def blocked_waiters(server: RedisServer) -> int:
    raw = server.client()
    try:
        clients = await raw.client_list()
    finally:
        await raw.aclose()
    return sum(1 for c in clients if c.get("cmd") == "bzpopmin" and "b" in c.get("flags", ""))


async def until_blocked(server: RedisServer, n: int = 1) -> None:
    async def enough() -> bool:
        return await blocked_waiters(server) >= n

    await wait_until(enough, timeout=5.0, interval=0.005)


async def work_one(backend: RedisBackend, timeout: float = 10.0) -> tuple[ClaimedJob, float]:
    """A worker's loop: claim, else block until woken; the job and when it was claimed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = await backend.claim("w", ["q"], 1, 30)
        if got:
            return got[0], time.monotonic()
        await backend.wait_for_jobs(["q"], deadline - time.monotonic())
    raise AssertionError("no job was claimed")


async def test_an_idle_waiter_is_woken_by_an_enqueue(
    server: RedisServer, clients: tuple[RedisBackend, RedisBackend]
) -> None:
    worker, producer = clients
    for _ in range(5):
        waiter = asyncio.create_task(worker.wait_for_jobs(["other", "q"], LONG_WAIT))
        await until_blocked(server)
        await producer.enqueue([job()])
        await asyncio.wait_for(waiter, 10)
        assert await worker.claim("w", ["q"], 5, 30)


async def test_an_idle_waiter_sends_no_commands(
    server: RedisServer, clients: tuple[RedisBackend, RedisBackend]
) -> None:
    worker, _ = clients
    raw = server.client()
    try:
        waiter = asyncio.create_task(worker.wait_for_jobs(["q"], 3))
        await until_blocked(server)
        before = await command_calls(raw)
        done, _ = await asyncio.wait({waiter}, timeout=1.5)  # observe 1.5 s of idleness
        assert not done
        delta = calls_delta(before, await command_calls(raw))
        # Only our own observation commands; the waiter sent nothing while it was idle.
        assert set(delta) <= {"info"}, delta
        await asyncio.wait_for(waiter, 5)
    finally:
        await raw.aclose()


async def test_a_delayed_job_starts_on_time(
    server: RedisServer, clients: tuple[RedisBackend, RedisBackend]
) -> None:
    worker, producer = clients
    lateness = []
    for delay in (0.15, 0.3, 0.42, 0.25, 0.33):
        task = asyncio.create_task(work_one(worker))
        await until_blocked(server)  # idle with nothing scheduled
        due = time.time() + delay
        due_monotonic = time.monotonic() + delay
        [result] = await producer.enqueue([job(run_at=due)])
        claimed, at = await asyncio.wait_for(task, 5)
        assert claimed.id == result.id
        lateness.append(at - due_monotonic)
    print(f"\ndelayed job lateness: {[round(x * 1000, 1) for x in lateness]} ms")
    # Never early. Not late either: the worker waits up to 10 s and was woken within the 5 s
    # deadline, by the job coming due (how promptly is a benchmark's business).
    assert all(late > -0.005 for late in lateness), lateness


async def test_a_retry_with_backoff_starts_on_time(
    server: RedisServer, clients: tuple[RedisBackend, RedisBackend]
) -> None:
    worker, producer = clients
    new = job(max_attempts=2)
    await producer.enqueue([new])
    [first] = await producer.claim("other", ["q"], 1, 30)
    task = asyncio.create_task(work_one(worker))
    await until_blocked(server)
    error = ErrorInfo("error", "RuntimeError", "boom", attempt=1, at=time.time())
    due_monotonic = time.monotonic() + 0.25
    await producer.fail(first.id, first.fence, error, retry_delay=0.25)
    claimed, at = await asyncio.wait_for(task, 5)
    assert claimed.id == new.id and claimed.attempt == 2
    assert at - due_monotonic > -0.005  # never early; on time: within the 5 s deadline


async def test_one_batch_wakes_as_many_idle_waiters_as_it_needs(
    server: RedisServer, clients: tuple[RedisBackend, RedisBackend]
) -> None:
    worker, producer = clients
    second = RedisFactory(server.url, prefix="w").create()
    latencies = []
    try:
        for _ in range(5):
            tasks = [asyncio.create_task(work_one(b)) for b in (worker, second)]
            await until_blocked(server, 2)
            start = time.monotonic()
            await producer.enqueue([job(), job()])
            results = await asyncio.wait_for(asyncio.gather(*tasks), 5)
            assert len({c.id for c, _ in results}) == 2
            # The first waiter's claim leaves a job, so it passes the wake-up to the second.
            latencies.append(max(at for _, at in results) - start)
        print(f"\nbatch wake-ups: {[round(x * 1000, 1) for x in latencies]} ms")
    finally:
        await second.close()


async def test_the_waiter_reconnects_after_its_connection_is_killed(
    server: RedisServer, clients: tuple[RedisBackend, RedisBackend]
) -> None:
    worker, producer = clients
    raw = server.client()
    try:
        waiter = asyncio.create_task(worker.wait_for_jobs(["q"], 10))
        await until_blocked(server)
        [blocked] = [c for c in await raw.client_list() if c.get("cmd") == "bzpopmin"]
        await raw.client_kill_filter(_id=blocked["id"])

        async def blocked_again() -> bool:
            clients = await raw.client_list()
            return any(c.get("cmd") == "bzpopmin" and c["id"] != blocked["id"] for c in clients)

        await wait_until(blocked_again, timeout=5.0, interval=0.005)
        assert not waiter.done()
        start = time.monotonic()
        await producer.enqueue([job()])
        await asyncio.wait_for(waiter, 5)  # its own wait is 10 s: the enqueue woke it
        print(f"\nwoken after {(time.monotonic() - start) * 1000:.1f} ms")
    finally:
        await raw.aclose()


async def test_the_waiter_rides_out_a_server_restart(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, "--appendonly", "yes", "--appendfsync", "always")
    await server.start()
    try:
        f = RedisFactory(server.url, prefix="w")
        worker, producer = f.create(), f.create()
        try:
            waiter = asyncio.create_task(worker.wait_for_jobs(["q"], 10))
            await until_blocked(server)
            server.kill()
            await asyncio.wait_for(waiter, 5)  # the connection dropped: returns, no error
            await server.start()
            task = asyncio.create_task(work_one(worker))
            await until_blocked(server)
            [result] = await producer.enqueue([job()])
            claimed, _ = await asyncio.wait_for(task, 5)
            assert claimed.id == result.id
        finally:
            await worker.close()
            await producer.close()
    finally:
        server.stop()


async def test_pushes_survive_a_dropped_pubsub_connection(
    server: RedisServer, clients: tuple[RedisBackend, RedisBackend]
) -> None:
    worker, producer = clients
    raw = server.client()
    received: list[str] = []

    async def listen() -> None:
        async for job_id in worker.subscribe_cancellations():
            received.append(job_id)

    listener = asyncio.create_task(listen())
    try:
        first, second = job(), job()
        await producer.enqueue([first, second])
        [c1, c2] = await producer.claim("w", ["q"], 2, 30)
        finish = asyncio.create_task(worker.wait_for_finish(c1.id, 30))

        async def subscribers() -> int:
            return sum(1 for c in await raw.client_list() if c.get("cmd") == "subscribe"
                       or int(c.get("sub", 0)) > 0)  # fmt: skip

        async def subscribed_once() -> bool:
            return await subscribers() == 1

        await wait_until(subscribed_once)
        assert await raw.client_kill_filter(_type="pubsub") == 1

        async def resubscribed() -> bool:
            clients = await raw.client_list()
            return any(int(c.get("sub", 0)) == 2 for c in clients)  # cancel + done:<id>

        await wait_until(resubscribed, timeout=10)
        assert await producer.cancel(c2.id, "stop") == "requested"
        assert await producer.complete(c1.id, c1.fence, b"ok")
        record = await asyncio.wait_for(finish, 5)
        assert record is not None and record.result == b"ok"

        async def got_cancel() -> bool:
            return received == [c2.id]

        await wait_until(got_cancel)
    finally:
        listener.cancel()
        await raw.aclose()
