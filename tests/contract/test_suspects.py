"""Jobs that stalled before: a worker holds at most one, so a job that kills its worker does not
take the jobs that merely shared the worker with it down again (see docs/reliability.md)."""

from __future__ import annotations

import pytest

from conveyor.backends import Backend
from conveyor.domain.job import NewJob

from ._support import T, job


async def _stalled(backend: Backend, *news: NewJob) -> None:
    """Enqueue ``news``, claim them all on worker w0 and let the lease expire: stalls 1 each."""
    await backend.enqueue(list(news), now=T)
    claimed = await backend.claim("w0", sorted({n.queue for n in news}), len(news), 10, now=T)
    assert len(claimed) == len(news)
    recovered = await backend.recover_expired(3, now=T + 11)
    assert sorted(r.id for r in recovered) == sorted(n.id for n in news)


@pytest.mark.parametrize("tasks", [None, ["tasks.*"]])
async def test_a_worker_holds_at_most_one_stalled_job(
    backend: Backend, tasks: list[str] | None
) -> None:
    s1, s2 = job(), job()
    await _stalled(backend, s1, s2)
    first, last = job(run_at=T - 1), job()
    await backend.enqueue([first, last], now=T + 12)
    # Order: first, s1, s2, last. The claim stops at the second stalled job.
    got = await backend.claim("w1", ["default"], 10, 10, now=T + 12, tasks=tasks)
    assert [(c.id, c.stalls) for c in got] == [(first.id, 0), (s1.id, 1)]
    # w1 holds one already: it takes none before s2 runs somewhere else.
    assert await backend.claim("w1", ["default"], 10, 10, now=T + 12, tasks=tasks) == []
    got = await backend.claim("w2", ["default"], 10, 10, now=T + 12, tasks=tasks)
    assert [c.id for c in got] == [s2.id, last.id]


async def test_the_stop_holds_across_queues(backend: Backend) -> None:
    s1, s2 = job(queue="q1"), job(queue="q1")
    await _stalled(backend, s1, s2)
    other = job(queue="q2")
    await backend.enqueue([other], now=T + 12)
    got = await backend.claim("w1", ["q1", "q2"], 10, 10, now=T + 12)
    assert [c.id for c in got] == [s1.id]
    # Jobs that never stalled are still for anyone.
    got = await backend.claim("w1", ["q2"], 10, 10, now=T + 12)
    assert [c.id for c in got] == [other.id]


async def test_once_the_stalled_job_is_done_the_worker_takes_the_next(backend: Backend) -> None:
    s1, s2 = job(), job()
    await _stalled(backend, s1, s2)
    [held] = await backend.claim("w1", ["default"], 10, 10, now=T + 12)
    assert held.id == s1.id
    assert await backend.claim("w1", ["default"], 1, 10, now=T + 12) == []
    assert await backend.complete(held.id, held.fence, None, now=T + 13)
    [nxt] = await backend.claim("w1", ["default"], 1, 10, now=T + 13)
    assert nxt.id == s2.id
