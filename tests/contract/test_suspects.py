"""Jobs that stalled twice (suspects): a worker holds at most one, so a job that kills its worker
does not take the jobs that merely shared the worker with it down again (docs/concepts.md).
One stall is not enough: after a plain crash every job the worker held has one."""

from __future__ import annotations

import pytest

from conveyor.backends import Backend
from conveyor.domain.job import NewJob

from ._support import T, job


async def _stalled(backend: Backend, *news: NewJob) -> None:
    """Enqueue ``news``, claim them all on worker w0 and let the lease expire, twice: stalls 2
    each (after the first stall they are still claimed together)."""
    await backend.enqueue(list(news), now=T)
    queues = sorted({n.queue for n in news})
    for round_ in range(2):
        at = T + 11 * round_
        claimed = await backend.claim("w0", queues, len(news), 10, now=at)
        assert sorted(c.id for c in claimed) == sorted(n.id for n in news)
        assert {c.stalls for c in claimed} == {round_}
        recovered = await backend.recover_expired(3, now=at + 11)
        assert sorted(r.id for r in recovered) == sorted(n.id for n in news)


@pytest.mark.parametrize("tasks", [None, ["tasks.*"]])
async def test_a_worker_holds_at_most_one_stalled_job(
    backend: Backend, tasks: list[str] | None
) -> None:
    s1, s2 = job(), job()
    await _stalled(backend, s1, s2)
    first, last = job(run_at=T - 1), job()
    await backend.enqueue([first, last], now=T + 23)
    # Order: first, s1, s2, last. The claim stops at the second stalled job.
    got = await backend.claim("w1", ["default"], 10, 10, now=T + 23, tasks=tasks)
    assert [(c.id, c.stalls) for c in got] == [(first.id, 0), (s1.id, 2)]
    # w1 holds one already: it takes none before s2 runs somewhere else.
    assert await backend.claim("w1", ["default"], 10, 10, now=T + 23, tasks=tasks) == []
    got = await backend.claim("w2", ["default"], 10, 10, now=T + 23, tasks=tasks)
    assert [c.id for c in got] == [s2.id, last.id]


async def test_the_stop_holds_across_queues(backend: Backend) -> None:
    s1, s2 = job(queue="q1"), job(queue="q1")
    await _stalled(backend, s1, s2)
    other = job(queue="q2")
    await backend.enqueue([other], now=T + 23)
    got = await backend.claim("w1", ["q1", "q2"], 10, 10, now=T + 23)
    assert [c.id for c in got] == [s1.id]
    # Jobs that never stalled are still for anyone.
    got = await backend.claim("w1", ["q2"], 10, 10, now=T + 23)
    assert [c.id for c in got] == [other.id]


async def test_once_the_stalled_job_is_done_the_worker_takes_the_next(backend: Backend) -> None:
    s1, s2 = job(), job()
    await _stalled(backend, s1, s2)
    [held] = await backend.claim("w1", ["default"], 10, 10, now=T + 23)
    assert held.id == s1.id
    assert await backend.claim("w1", ["default"], 1, 10, now=T + 23) == []
    assert await backend.complete(held.id, held.fence, None, now=T + 24)
    [nxt] = await backend.claim("w1", ["default"], 1, 10, now=T + 24)
    assert nxt.id == s2.id


async def test_jobs_that_stalled_once_are_still_claimed_together(backend: Backend) -> None:
    """A worker crash leaves every job it held with one stall: recovery must not serialise them."""
    jobs = [job() for _ in range(4)]
    await backend.enqueue(jobs, now=T)
    assert len(await backend.claim("w0", ["default"], 4, 10, now=T)) == 4
    await backend.recover_expired(3, now=T + 11)
    got = await backend.claim("w1", ["default"], 10, 10, now=T + 11)
    assert [(c.id, c.stalls) for c in got] == [(j.id, 1) for j in jobs]
