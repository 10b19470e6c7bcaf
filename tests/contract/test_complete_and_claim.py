"""``complete_and_claim``: a completion and the next claim in one call, with the semantics of
the two calls made one after the other (every backend; most override it to save a round
trip)."""

from __future__ import annotations

from conveyor.backends import Backend
from conveyor.domain.states import JobState

from ._support import T, job


async def test_it_completes_then_claims_in_order(backend: Backend) -> None:
    jobs = [job(priority=p) for p in (0, 5, 0, 1)]
    await backend.enqueue(jobs, now=T)
    [first] = await backend.claim("w", ["default"], 1, 30, now=T)
    assert first.id == jobs[1].id
    done, nxt = await backend.complete_and_claim(
        first.id, first.fence, b"r", "w", ["default"], 2, 30, now=T + 1
    )
    assert done is True
    assert [c.id for c in nxt] == [jobs[3].id, jobs[0].id]
    assert all(c.lease_until == T + 31 and c.attempt == 1 for c in nxt)
    record = await backend.get_job(first.id)
    assert record is not None and record.state is JobState.COMPLETED
    assert record.result == b"r" and record.finished_at == T + 1
    for c in nxt:
        got = await backend.get_job(c.id)
        assert got is not None and got.state is JobState.RUNNING and got.lease_owner == "w"


async def test_a_stale_fence_completes_nothing_but_still_claims(backend: Backend) -> None:
    a, b = job(), job()
    await backend.enqueue([a, b], now=T)
    [held] = await backend.claim("w", ["default"], 1, 30, now=T)
    done, nxt = await backend.complete_and_claim(
        held.id, held.fence + 1, None, "w", ["default"], 1, 30, now=T + 1
    )
    assert done is False
    assert [c.id for c in nxt] == [b.id]
    record = await backend.get_job(held.id)
    assert record is not None and record.state is JobState.RUNNING


async def test_nothing_to_claim_and_limits(backend: Backend) -> None:
    a, other = job(), job(queue="other", task="tasks.other")
    await backend.enqueue([a, other], now=T)
    [held] = await backend.claim("w", ["default"], 1, 30, now=T)
    done, nxt = await backend.complete_and_claim(
        held.id, held.fence, None, "w", ["default"], 5, 30, now=T + 1
    )
    assert (done, nxt) == (True, [])  # the other queue is not ours
    [held] = await backend.claim("w", ["other"], 1, 30, now=T + 1)
    done, nxt = await backend.complete_and_claim(
        held.id, held.fence, None, "w", ["other"], 0, 30, now=T + 2
    )
    assert (done, nxt) == (True, [])
    rows = {(r.queue, r.state): r.count for r in await backend.count_jobs()}
    assert rows == {("default", JobState.COMPLETED): 1, ("other", JobState.COMPLETED): 1}


async def test_task_filters_apply_to_the_claim(backend: Backend) -> None:
    first, skipped, wanted = job(), job(task="tasks.skip"), job(task="tasks.want")
    await backend.enqueue([first, skipped, wanted], now=T)
    [held] = await backend.claim("w", ["default"], 1, 30, now=T)
    done, nxt = await backend.complete_and_claim(
        held.id,
        held.fence,
        None,
        "w",
        ["default"],
        5,
        30,
        now=T + 1,
        tasks=["tasks.*"],
        exclude_tasks=["tasks.skip"],
    )
    assert done is True
    assert [c.id for c in nxt] == [wanted.id]
