"""Contract of the browsing capability (:class:`conveyor.backends.capabilities.JobBrowser`),
every backend held to the memory reference: keyset paging with filters, capped counts, the
oldest queued job, idempotency-key lookup and the stored throughput counters."""

from __future__ import annotations

import pytest

from conveyor.backends import Backend
from conveyor.backends.capabilities import JobBrowser, capability_names
from conveyor.backends.capabilities.browse import BrowseQuery, StateCount, ThroughputRow, bucket_of
from conveyor.domain.states import JobState

from .._support import T, error, job


def _b(backend: Backend) -> JobBrowser:
    assert isinstance(backend, JobBrowser), f"{type(backend).__name__} lacks browsing"
    return backend


async def _ids(backend: Backend, **query: object) -> list[str]:
    return [r.id for r in await _b(backend).browse_jobs(BrowseQuery(**query))]  # type: ignore[arg-type]


async def test_every_backend_declares_the_capability(backend: Backend) -> None:
    assert "browse" in capability_names(backend)


async def test_keyset_pages_newest_first_in_both_directions(backend: Backend) -> None:
    jobs = [job() for _ in range(7)]
    await backend.enqueue(jobs[3:], now=T)
    await backend.enqueue(jobs[:3], now=T + 1)
    ids = [j.id for j in reversed(jobs)]
    assert await _ids(backend) == ids
    first = await _ids(backend, limit=3)
    assert first == ids[:3]
    second = await _ids(backend, limit=3, before=first[-1])
    assert second == ids[3:6]
    assert await _ids(backend, limit=3, before=second[-1]) == ids[6:]
    assert await _ids(backend, limit=3, before=ids[-1]) == []
    # Back towards newer jobs: the 3 just above the cursor, still newest first.
    assert await _ids(backend, limit=3, after=second[0]) == ids[:3]
    assert await _ids(backend, limit=2, after=ids[5]) == ids[3:5]
    assert await _ids(backend, after=ids[0]) == []
    assert await _ids(backend, limit=0) == []


async def test_browse_filters_by_state_queue_task_and_error_code(backend: Backend) -> None:
    a, b, c = job("a", "q1"), job("b", "q1"), job("a", "q2")
    d = job("a", "q1", run_at=T + 60)
    await backend.enqueue([a, b, c, d], now=T)
    [claimed] = await backend.claim("w", ["q2"], 1, 30, now=T)
    await backend.fail(claimed.id, claimed.fence, error("timeout"), retry_delay=None, now=T + 1)
    assert await _ids(backend, states=(JobState.QUEUED,)) == [b.id, a.id]
    assert await _ids(backend, states=(JobState.QUEUED, JobState.SCHEDULED)) == [d.id, b.id, a.id]
    assert await _ids(backend, queue="q1") == [d.id, b.id, a.id]
    assert await _ids(backend, task="a") == [d.id, c.id, a.id]
    assert await _ids(backend, task="a", queue="q1", states=(JobState.QUEUED,)) == [a.id]
    assert await _ids(backend, error_code="timeout") == [c.id]
    assert await _ids(backend, error_code="other") == []
    assert await _ids(backend, queue="nope") == []
    assert await _ids(backend, queue="q1", before=b.id) == [a.id]
    [record] = await _b(backend).browse_jobs(BrowseQuery(states=(JobState.FAILED,)))
    assert record.error is not None and record.error.code == "timeout"
    assert record.payload == c.payload and record.state is JobState.FAILED


async def test_counts_are_exact_up_to_the_cap(backend: Backend) -> None:
    await backend.enqueue([job("a", "q1") for _ in range(5)], now=T)
    await backend.enqueue([job("b", "q2"), job("b", "q2", run_at=T + 60)], now=T)
    await backend.claim("w", ["q2"], 1, 30, now=T)
    counts = await _b(backend).count_states(cap=3)
    assert counts == [
        StateCount("q1", JobState.QUEUED, 3, exact=False),
        StateCount("q2", JobState.RUNNING, 1),
        StateCount("q2", JobState.SCHEDULED, 1),
    ]
    assert await _b(backend).count_states() == [
        StateCount("q1", JobState.QUEUED, 5),
        StateCount("q2", JobState.RUNNING, 1),
        StateCount("q2", JobState.SCHEDULED, 1),
    ]


async def test_oldest_queued_per_queue(backend: Backend) -> None:
    assert await _b(backend).oldest_queued() == {}
    await backend.enqueue([job("a", "q1", run_at=T - 30), job("a", "q1", priority=5)], now=T)
    await backend.enqueue([job("a", "q2", run_at=T + 60)], now=T)
    oldest = await _b(backend).oldest_queued()
    assert oldest == {"q1": pytest.approx(T - 30, abs=1e-3)}


async def test_job_for_key(backend: Backend) -> None:
    first = job(idempotency_key="k1")
    await backend.enqueue([first, job()], now=T)
    assert await _b(backend).job_for_key("k1") == first.id
    assert await _b(backend).job_for_key("absent") is None


async def test_throughput_counters_add_read_and_prune(
    backend: Backend, other_backend: Backend
) -> None:
    b0, b1 = bucket_of(T), bucket_of(T) + 60
    assert b0 <= T < b0 + 60
    await _b(backend).add_throughput(
        [
            ThroughputRow(b0, "q", "a", "succeeded", 2, 0.5),
            ThroughputRow(b0, "q", "a", "dead", 1, 0.25),
        ]
    )
    await _b(other_backend).add_throughput(
        [
            ThroughputRow(b0, "q", "a", "succeeded", 3, 1.0),
            ThroughputRow(b1, "q:x", "b", "retried", 1, 2.0),
        ]
    )
    rows = await _b(backend).read_throughput(b0)
    assert rows == [
        ThroughputRow(b0, "q", "a", "dead", 1, 0.25),
        ThroughputRow(b0, "q", "a", "succeeded", 5, 1.5),
        ThroughputRow(b1, "q:x", "b", "retried", 1, 2.0),
    ]
    assert await _b(backend).read_throughput(b1) == rows[2:]
    assert await _b(backend).prune_throughput(b1) == 2
    assert await _b(backend).read_throughput(0) == rows[2:]
