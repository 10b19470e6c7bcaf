"""Redis restarts: with AOF (``appendfsync always``) a ``kill -9`` loses nothing, even under
load, and clients reconnect by themselves; without persistence everything is gone."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from conveyor.backends.redis import RedisBackend, RedisFactory
from conveyor.domain.ids import new_job_id
from conveyor.domain.job import ErrorInfo, JobFilter, NewJob, WorkerInfo
from conveyor.domain.states import JobState
from conveyor.errors import StorageUnavailableError

try:
    from .test_redis_support import RedisServer
except ImportError:  # tests/integration is not a package
    from test_redis_support import RedisServer  # type: ignore[no-redef]

T = 1_700_000_000.0
AOF = ("--appendonly", "yes", "--appendfsync", "always")


def job(**fields: object) -> NewJob:
    fields.setdefault("id", new_job_id())
    fields.setdefault("payload", b"payload")
    return NewJob(task="tasks.work", queue="q", **fields)  # type: ignore[arg-type]


async def _everything(backend: RedisBackend) -> tuple[object, ...]:
    return (
        await backend.list_jobs(JobFilter(), limit=10_000),
        await backend.count_jobs(),
        await backend.list_workers(),
    )


async def test_kill_9_with_aof_loses_nothing(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, *AOF)
    await server.start()
    backend = RedisFactory(server.url, prefix="app").create()
    try:
        await backend.open()
        await backend.enqueue([job(priority=i % 3) for i in range(200)], now=T)
        await backend.enqueue(
            [job(run_at=T + 60 + i, idempotency_key=f"k{i}") for i in range(50)], now=T
        )
        claimed = await backend.claim("w", ["q"], 30, 30, now=T)
        for c in claimed[:10]:
            assert await backend.complete(c.id, c.fence, b"result", now=T + 1)
        error = ErrorInfo("error", "RuntimeError", "boom", attempt=1, at=T + 1)
        for c in claimed[10:15]:
            await backend.fail(c.id, c.fence, error, retry_delay=None, now=T + 1)
        await backend.register_worker(WorkerInfo("w", "host", 1, T, T, ("q",), 4))
        before = await _everything(backend)

        server.kill()
        await server.start()

        # The same client reconnects by itself; the scripts are loaded again on NOSCRIPT.
        assert await _everything(backend) == before
        more = await backend.claim("w", ["q"], 500, 30, now=T + 2)
        assert len(more) == 200 - 30
        for c in claimed[15:]:
            assert await backend.complete(c.id, c.fence, None, now=T + 3)
    finally:
        await backend.close()
        server.stop()


async def test_restart_under_load_with_aof_loses_no_acknowledged_job(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, *AOF)
    await server.start()
    factory = RedisFactory(server.url, prefix="app", retries=10)
    producer, worker = factory.create(), factory.create()
    acked: list[str] = []
    completed: set[str] = set()
    errors: list[str] = []
    stop_producing = asyncio.Event()

    async def produce() -> None:
        while not stop_producing.is_set():
            batch = [job() for _ in range(1 + len(acked) % 5)]
            try:
                results = await producer.enqueue(batch)
            except StorageUnavailableError as exc:  # the outage outlasted the retries
                errors.append(str(exc))
                continue
            acked.extend(r.id for r in results)

    async def work() -> None:
        while True:
            try:
                await worker.recover_expired(5)
                batch = await worker.claim("w", ["q"], 10, 2.0)
                for c in batch:
                    await worker.complete(c.id, c.fence, b"ok")
                    completed.add(c.id)
                if not batch:
                    if stop_producing.is_set() and set(acked) <= completed:
                        return
                    await worker.wait_for_jobs(["q"], 0.5)
            except StorageUnavailableError as exc:
                errors.append(str(exc))

    try:
        tasks = [asyncio.create_task(produce()), asyncio.create_task(work())]
        while len(acked) < 300:
            await asyncio.sleep(0.01)  # let the load build up (a poll with the loop below)
        server.kill()
        killed_at = len(acked)
        await server.start()
        deadline = time.monotonic() + 20
        while len(acked) < killed_at + 300 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # let the load run on after the restart
        stop_producing.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)

        assert len(acked) >= killed_at + 300
        assert len(set(acked)) == len(acked)
        records = {r.id: r for r in await producer.list_jobs(JobFilter(), limit=100_000)}
        lost = [job_id for job_id in acked if job_id not in records]
        assert lost == [], f"{len(lost)} acknowledged jobs lost"
        assert {records[job_id].state for job_id in acked} == {JobState.COMPLETED}
        print(f"\n{len(acked)} jobs acknowledged, {killed_at} before the kill; "
              f"errors surfaced to callers: {len(errors)}")  # fmt: skip
    finally:
        stop_producing.set()
        await producer.close()
        await worker.close()
        server.stop()


async def test_an_unpersisted_redis_forgets_everything_on_restart(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, "--appendonly", "no")
    await server.start()
    backend = RedisFactory(server.url, prefix="app").create()
    try:
        [result] = await backend.enqueue([job()])
        server.kill()
        await server.start()
        assert await backend.get_job(result.id) is None
        assert await backend.count_jobs() == []
        assert (await backend.enqueue([job()]))[0].created  # and it carries on
    finally:
        await backend.close()
        server.stop()
