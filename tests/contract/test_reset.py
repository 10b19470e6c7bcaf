"""``BackendFactory.reset``: the store is emptied and stays usable, by this client and others."""

from __future__ import annotations

from conveyor.backends import Backend, BackendFactory
from conveyor.backends.capabilities import KeyValueStore
from conveyor.domain.job import JobFilter, WorkerInfo

from ._support import T, job


async def test_reset_empties_the_store_and_leaves_it_usable(
    backend: Backend, other_backend: Backend, backend_factory: BackendFactory
) -> None:
    keyed = job(idempotency_key="k")
    await backend.enqueue([keyed, job()], now=T)
    await backend.register_worker(WorkerInfo("w", "h", 1, T, T, ("default",), 1))
    assert isinstance(backend, KeyValueStore)
    assert await backend.kv_swap("ns", "key", None, b"v")

    assert isinstance(await backend_factory.reset(), list)

    for client in (backend, other_backend):  # clients opened before the reset keep working
        assert await client.list_jobs(JobFilter()) == []
        assert await client.count_jobs() == []
        assert await client.list_workers() == []
        assert isinstance(client, KeyValueStore)
        assert await client.kv_get("ns", "key") is None
    again = job(idempotency_key="k")  # the key was freed with its job
    [result] = await other_backend.enqueue([again], now=T)
    assert result.created and result.id == again.id
    [claimed] = await backend.claim("w", ["default"], 1, 30.0, now=T)
    assert claimed.id == again.id
