"""Factories: clients share one store, stores are isolated, migrate and destroy."""

from __future__ import annotations

from pathlib import Path
from uuid import uuid4

from conveyor.backends import Backend, BackendFactory
from conveyor.domain.job import JobFilter, WorkerInfo
from conveyor.domain.states import JobState

from ._support import T, job, open_factory


async def _client(factory: BackendFactory) -> Backend:
    client = factory.create()
    await client.open()
    return client


async def test_clients_share_the_store_and_outlive_each_other(
    backend_factory: BackendFactory,
) -> None:
    first = await _client(backend_factory)
    new = job()
    await first.enqueue([new], now=T)
    await first.register_worker(WorkerInfo("w", "h", 1, T, T, ("default",), 1))
    await first.close()
    second = await _client(backend_factory)
    try:
        [claimed] = await second.claim("w", ["default"], 1, 30, now=T)
        assert claimed.id == new.id
        assert [w.id for w in await second.list_workers()] == ["w"]
    finally:
        await second.close()
    third = await _client(backend_factory)
    try:
        record = await third.get_job(new.id)
        assert record is not None and record.state is JobState.RUNNING
    finally:
        await third.close()


async def test_migrate_again_changes_nothing(
    backend: Backend, backend_factory: BackendFactory
) -> None:
    new = job()
    await backend.enqueue([new], now=T)
    await backend_factory.migrate()
    assert await backend_factory.migrate() == []
    assert [r.id for r in await backend.list_jobs(JobFilter())] == [new.id]


async def test_stores_are_isolated_and_destroy_only_its_own(
    backend_kind: str, tmp_path: Path
) -> None:
    # The second store's name extends the first's: a careless prefix match would mix them.
    name = uuid4().hex[:10]
    factories = [
        await open_factory(backend_kind, tmp_path, name),
        await open_factory(backend_kind, tmp_path, name + "x"),
    ]
    clients = [await _client(f) for f in factories]
    try:
        jobs = [job(queue="shared"), job(queue="shared")]
        for client, new in zip(clients, jobs, strict=True):
            await client.enqueue([new], now=T)
            await client.register_worker(WorkerInfo(new.id, "h", 1, T, T, ("shared",), 1))
        for client, new in zip(clients, jobs, strict=True):
            assert [r.id for r in await client.list_jobs(JobFilter())] == [new.id]
            assert [w.id for w in await client.list_workers()] == [new.id]
        await clients[0].close()
        await factories[0].destroy()
        survivor = clients[1]
        assert [r.id for r in await survivor.list_jobs(JobFilter())] == [jobs[1].id]
        [claimed] = await survivor.claim("w", ["shared"], 5, 30, now=T)
        assert claimed.id == jobs[1].id
        # The destroyed store, opened again, is empty.
        again = await open_factory(backend_kind, tmp_path, name)
        fresh = await _client(again)
        try:
            assert await fresh.list_jobs(JobFilter()) == []
            assert await fresh.list_workers() == []
            assert await fresh.count_jobs() == []
        finally:
            await fresh.close()
            await again.destroy()
    finally:
        await clients[1].close()
        await factories[1].destroy()
