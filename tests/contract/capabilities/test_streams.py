"""Contract of the event-sourcing capability (:class:`~conveyor.backends.capabilities.EventStreams`
): expected-version appends (one winner among concurrent writers), idempotent retries, reads
from a version, snapshots, and retention that never removes what the latest snapshot does
not cover."""

from __future__ import annotations

import asyncio
from typing import Any

from conveyor.backends import Backend
from conveyor.backends.capabilities import EventStreams, capability_names
from conveyor.domain.events import NewStreamEvent
from conveyor.domain.ids import new_job_id

from .._support import T


def _streams(backend: Backend) -> EventStreams:
    assert isinstance(backend, EventStreams), f"{type(backend).__name__} lacks streams"
    return backend


def ev(name: str = "account.deposited", **fields: Any) -> NewStreamEvent:
    fields.setdefault("id", new_job_id())
    fields.setdefault("payload", b'{"amount":10}')
    return NewStreamEvent(name=name, **fields)


async def test_every_backend_declares_the_capability(backend: Backend) -> None:
    assert "streams" in capability_names(backend)


async def test_append_with_expected_versions_and_read_back(backend: Backend) -> None:
    s = _streams(backend)
    assert await s.stream_version("acc-1") == 0
    opened = ev("account.opened", headers={"by": "ada"}, schema_version=2)
    result = await s.stream_append("acc-1", [opened, ev()], 0, T)
    assert (result.appended, result.version) == (True, 2)
    assert (await s.stream_append("acc-1", [ev()], 0, T)).appended is False  # stale
    conflict = await s.stream_append("acc-1", [ev()], 5, T)
    assert (conflict.appended, conflict.version) == (False, 2)
    assert (await s.stream_append("acc-1", [ev()], None, T + 1)).version == 3  # any version
    assert (await s.stream_append("acc-2", [ev()], 0, T)).version == 1  # streams are separate
    records = await s.stream_read("acc-1")
    assert [r.version for r in records] == [1, 2, 3]
    first = records[0]
    assert (first.stream, first.id, first.name, first.payload, first.headers) == (
        "acc-1",
        opened.id,
        "account.opened",
        b'{"amount":10}',
        {"by": "ada"},
    )
    assert first.schema_version == 2 and first.recorded_at == T and records[2].recorded_at == T + 1
    assert [r.version for r in await s.stream_read("acc-1", 1)] == [2, 3]
    assert [r.version for r in await s.stream_read("acc-1", 0, limit=2)] == [1, 2]
    assert await s.stream_read("nothing") == []
    assert await s.stream_version("acc-1") == 3


async def test_a_repeated_append_answers_as_the_first(backend: Backend) -> None:
    s = _streams(backend)
    batch = [ev(), ev()]
    assert (await s.stream_append("acc", batch, 0, T)).version == 2
    again = await s.stream_append("acc", batch, 0, T)  # e.g. a retry after a lost reply
    assert (again.appended, again.version) == (True, 2)
    assert len(await s.stream_read("acc")) == 2


async def test_concurrent_appends_at_one_version_have_one_winner(
    backend: Backend, other_backend: Backend
) -> None:
    clients = [_streams(backend), _streams(other_backend)] * 4
    await clients[0].stream_append("acc", [ev()], 0, T)
    results = await asyncio.gather(*(c.stream_append("acc", [ev(), ev()], 1, T) for c in clients))
    assert sum(r.appended for r in results) == 1
    assert [r.version for r in await clients[0].stream_read("acc")] == [1, 2, 3]


async def test_snapshots_keep_the_latest_and_retention_spares_the_rest(backend: Backend) -> None:
    s = _streams(backend)
    assert await s.snapshot_load("acc") is None
    await s.stream_append("acc", [ev() for _ in range(5)], 0, T)
    await s.stream_append("acc", [ev() for _ in range(3)], 5, T + 10)
    await s.snapshot_save("acc", 3, b"state-3", 1, T)
    await s.snapshot_save("acc", 6, b"state-6", 2, T + 10)
    snap = await s.snapshot_load("acc")
    assert snap is not None
    assert (snap.stream, snap.version, snap.state, snap.schema_version, snap.taken_at) == (
        "acc",
        6,
        b"state-6",
        2,
        T + 10,
    )
    await s.stream_append("other", [ev()], 0, T)  # no snapshot: never pruned
    assert await s.stream_prune(T + 5, 100) == 5  # versions 1-5 are old and covered
    assert [r.version for r in await s.stream_read("acc")] == [6, 7, 8]
    assert await s.stream_prune(T + 20, 100) == 1  # version 6; 7 and 8 are newer than it
    assert [r.version for r in await s.stream_read("acc")] == [7, 8]
    assert len(await s.stream_read("other")) == 1
    assert await s.stream_version("acc") == 8
    assert (await s.stream_append("acc", [ev()], 8, T + 30)).version == 9
