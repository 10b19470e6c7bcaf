"""Claim: leases, strict order, queue precedence, task patterns, promotion and expiry."""

from __future__ import annotations

import asyncio
import time

import pytest

from conveyor.backends import Backend, BackendFactory
from conveyor.domain.job import ClaimedJob, JobFilter
from conveyor.domain.states import JobState

from ._support import T, approx_t, error, job, normalized_claim


async def test_claim_leases_the_job(backend: Backend) -> None:
    new = job(
        "mail.send",
        "emails",
        b"body",
        priority=3,
        max_attempts=4,
        timeout=12.5,
        idempotency_key="key",
        trace_id="trace",
        metadata={"m": [1, 2]},
        workflow_id="wf",
        payload_version=2,
    )
    await backend.enqueue([new], now=T)
    [claimed] = await backend.claim("worker-1", ["emails"], 5, 30.0, now=T + 2)
    expected = ClaimedJob(
        id=new.id,
        task="mail.send",
        queue="emails",
        payload=b"body",
        priority=3,
        attempt=1,
        max_attempts=4,
        fence=claimed.fence,
        lease_until=T + 32,
        timeout=12.5,
        trace_id="trace",
        idempotency_key="key",
        metadata={"m": [1, 2]},
        payload_version=2,
        created_at=T,
        stalls=0,
        workflow_id="wf",
    )
    assert normalized_claim(claimed, keep_fence=True) == normalized_claim(expected, keep_fence=True)
    record = await backend.get_job(new.id)
    assert record is not None
    assert record.state is JobState.RUNNING
    assert record.attempts == 1
    assert record.fence == claimed.fence
    assert record.lease_owner == "worker-1"
    assert record.lease_until == approx_t(T + 32)
    assert record.started_at == approx_t(T + 2)
    assert record.run_at == approx_t(T)
    assert record.finished_at is None


async def test_claim_with_store_clock(backend: Backend) -> None:
    await backend.enqueue([job()])
    before = time.time()
    [claimed] = await backend.claim("w", ["default"], 1, 60.0)
    after = time.time()
    assert before + 59.0 <= claimed.lease_until <= after + 61.0
    record = await backend.get_job(claimed.id)
    assert record is not None and record.started_at is not None
    assert before - 1.0 <= record.started_at <= after + 1.0


async def test_claim_order_is_priority_then_run_at_then_enqueue_order(backend: Backend) -> None:
    jobs = {
        "low-old": job(priority=-1, run_at=T - 100),
        "mid-late": job(priority=0, run_at=T - 5),
        "mid-early-a": job(priority=0, run_at=T - 10),
        "high": job(priority=10, run_at=T - 1),
        "mid-early-b": job(priority=0, run_at=T - 10),
        "high-older": job(priority=10, run_at=T - 2),
        "mid-early-c": job(priority=0, run_at=T - 10),
    }
    # Enqueued in an order unrelated to the claim order; ids still follow creation.
    await backend.enqueue(list(jobs.values()), now=T)
    names = {j.id: name for name, j in jobs.items()}
    first = await backend.claim("w", ["default"], 3, 30, now=T)
    rest = await backend.claim("w", ["default"], 10, 30, now=T)
    assert [names[c.id] for c in first] == ["high-older", "high", "mid-early-a"]
    assert [names[c.id] for c in rest] == [
        "mid-early-b",
        "mid-early-c",
        "mid-late",
        "low-old",
    ]


async def test_claim_one_at_a_time_follows_enqueue_order(backend: Backend) -> None:
    batch = [job() for _ in range(6)]
    await backend.enqueue(batch[:3], now=T)
    for j in batch[3:]:
        await backend.enqueue([j], now=T)
    order = [(await backend.claim("w", ["default"], 1, 30, now=T))[0].id for _ in batch]
    assert order == [j.id for j in batch]


async def test_claim_takes_at_most_limit(backend: Backend) -> None:
    await backend.enqueue([job() for _ in range(5)], now=T)
    assert await backend.claim("w", ["default"], 0, 30, now=T) == []
    assert len(await backend.claim("w", ["default"], 2, 30, now=T)) == 2
    assert len(await backend.claim("w", ["default"], 2, 30, now=T)) == 2
    assert len(await backend.claim("w", ["default"], 2, 30, now=T)) == 1
    assert await backend.claim("w", ["default"], 2, 30, now=T) == []
    queued = await backend.list_jobs(JobFilter(states=(JobState.QUEUED,)))
    assert queued == []


async def test_claim_only_from_named_queues_in_precedence_order(backend: Backend) -> None:
    low = [job(queue="low", priority=100) for _ in range(2)]
    high = [job(queue="high", priority=-100) for _ in range(2)]
    ignored = job(queue="elsewhere", priority=1000)
    await backend.enqueue([*low, *high, ignored], now=T)
    first = await backend.claim("w", ["high", "low"], 3, 30, now=T)
    assert [c.id for c in first] == [high[0].id, high[1].id, low[0].id]
    assert [c.queue for c in first] == ["high", "high", "low"]
    second = await backend.claim("w", ["high", "low"], 3, 30, now=T)
    assert [c.id for c in second] == [low[1].id]
    assert await backend.claim("w", ["nothing-here"], 3, 30, now=T) == []
    untouched = await backend.get_job(ignored.id)
    assert untouched is not None and untouched.state is JobState.QUEUED


async def test_claim_precedence_is_the_order_given(backend: Backend) -> None:
    a, b = job(queue="a"), job(queue="b")
    await backend.enqueue([a, b], now=T)
    [claimed] = await backend.claim("w", ["b", "a"], 1, 30, now=T)
    assert claimed.id == b.id


@pytest.mark.parametrize(
    ("patterns", "claimable"),
    [
        (None, {"mail.send", "mail.", "mailxsend", "a%b", "a_b", "a.b", "[ab]", "report"}),
        (["*"], {"mail.send", "mail.", "mailxsend", "a%b", "a_b", "a.b", "[ab]", "report"}),
        (["mail.*"], {"mail.send", "mail."}),
        (["mail.send"], {"mail.send"}),
        (["m*l*d"], {"mail.send", "mailxsend"}),
        (["*.*"], {"mail.send", "mail.", "a.b"}),
        (["a%b"], {"a%b"}),
        (["a_b"], {"a_b"}),
        (["a.b"], {"a.b"}),
        (["[ab]"], {"[ab]"}),
        (["nothing", "rep*"], {"report"}),
        ([], set()),
    ],
    ids=[
        "none",
        "star",
        "prefix",
        "exact",
        "inner-stars",
        "dot-star",
        "percent-literal",
        "underscore-literal",
        "dot-literal",
        "brackets-literal",
        "several",
        "empty-list",
    ],
)
async def test_claim_task_patterns(
    backend: Backend, patterns: list[str] | None, claimable: set[str]
) -> None:
    names = ["mail.send", "mail.", "mailxsend", "a%b", "a_b", "a.b", "[ab]", "report"]
    jobs = [job(name) for name in names]
    await backend.enqueue(jobs, now=T)
    claimed = await backend.claim("w", ["default"], 100, 30, now=T, tasks=patterns)
    assert {c.task for c in claimed} == claimable
    queued = await backend.list_jobs(JobFilter(states=(JobState.QUEUED,)), limit=100)
    assert {r.task for r in queued} == set(names) - claimable


async def test_claim_exclude_tasks_are_exact_names(backend: Backend) -> None:
    names = ["mail.send", "mail.*", "report", "a%b", "a_c"]
    await backend.enqueue([job(name) for name in names], now=T)
    claimed = await backend.claim(
        "w", ["default"], 100, 30, now=T, exclude_tasks=["mail.*", "report", "a_b", "a%"]
    )
    assert {c.task for c in claimed} == {"mail.send", "a%b", "a_c"}


async def test_claim_patterns_and_exclusions_combine(backend: Backend) -> None:
    await backend.enqueue([job(n) for n in ["mail.send", "mail.bulk", "report"]], now=T)
    claimed = await backend.claim(
        "w", ["default"], 100, 30, now=T, tasks=["mail.*"], exclude_tasks=["mail.bulk"]
    )
    assert [c.task for c in claimed] == ["mail.send"]


async def test_claim_skips_non_matching_jobs_without_losing_order(backend: Backend) -> None:
    first_b = job("b", priority=5)
    a1, a2 = job("a"), job("a")
    await backend.enqueue([first_b, a1, a2], now=T)
    assert [c.id for c in await backend.claim("w", ["default"], 1, 30, now=T, tasks=["a"])] == [
        a1.id
    ]
    assert [c.id for c in await backend.claim("w", ["default"], 5, 30, now=T)] == [
        first_b.id,
        a2.id,
    ]


async def test_scheduled_job_is_promoted_when_due_and_not_before(backend: Backend) -> None:
    later = job(run_at=T + 10)
    await backend.enqueue([later], now=T)
    assert await backend.claim("w", ["default"], 1, 30, now=T + 9.5) == []
    record = await backend.get_job(later.id)
    assert record is not None and record.state is JobState.SCHEDULED
    [claimed] = await backend.claim("w", ["default"], 1, 30, now=T + 10)
    assert claimed.id == later.id
    assert claimed.lease_until == approx_t(T + 40)


async def test_promoted_jobs_are_ordered_by_run_at(backend: Backend) -> None:
    ready = job(run_at=T + 1)
    earlier = job(run_at=T - 3)
    late = job(run_at=T + 2)
    await backend.enqueue([late, ready], now=T - 10)
    await backend.enqueue([earlier], now=T - 10)
    claimed = await backend.claim("w", ["default"], 10, 30, now=T + 5)
    assert [c.id for c in claimed] == [earlier.id, ready.id, late.id]


async def test_claim_promotes_due_jobs_of_every_queue(backend: Backend) -> None:
    elsewhere = job(queue="elsewhere", run_at=T + 5)
    await backend.enqueue([elsewhere], now=T)
    assert await backend.claim("w", ["default"], 1, 30, now=T + 6) == []
    record = await backend.get_job(elsewhere.id)
    assert record is not None and record.state is JobState.QUEUED
    assert record.run_at == approx_t(T + 5)


async def test_claim_expires_waiting_jobs_past_their_ttl(backend: Backend) -> None:
    stale = job(expires_at=T + 5)
    stale_scheduled = job(run_at=T + 3, expires_at=T + 4)
    stale_elsewhere = job(queue="elsewhere", expires_at=T + 2)
    fresh = job(expires_at=T + 100)
    await backend.enqueue([stale, stale_scheduled, stale_elsewhere, fresh], now=T)
    claimed = await backend.claim("w", ["default"], 10, 30, now=T + 5)
    assert [c.id for c in claimed] == [fresh.id]
    for expired_id in (stale.id, stale_scheduled.id, stale_elsewhere.id):
        record = await backend.get_job(expired_id)
        assert record is not None
        assert record.state is JobState.EXPIRED
        assert record.finished_at == approx_t(T + 5)
        assert record.error is not None and record.error.code == "expired"
        assert record.errors == (record.error,)
        assert record.attempts == 0


async def test_running_job_is_not_expired_by_its_ttl(backend: Backend) -> None:
    new = job(expires_at=T + 5)
    await backend.enqueue([new], now=T)
    [claimed] = await backend.claim("w", ["default"], 1, 30, now=T + 4)
    assert await backend.claim("w", ["default"], 1, 30, now=T + 6) == []
    record = await backend.get_job(new.id)
    assert record is not None and record.state is JobState.RUNNING
    assert await backend.complete(new.id, claimed.fence, None, now=T + 7)


async def test_blocked_and_running_jobs_are_never_claimed(backend: Backend) -> None:
    blocked = job(blocked=True)
    running = job()
    await backend.enqueue([running], now=T)
    [first] = await backend.claim("w", ["default"], 1, 30, now=T)
    await backend.enqueue([blocked], now=T)
    assert await backend.claim("w2", ["default"], 10, 30, now=T + 1000) == []
    assert first.id == running.id
    record = await backend.get_job(blocked.id)
    assert record is not None and record.state is JobState.BLOCKED


async def test_fence_grows_with_every_claim(backend: Backend) -> None:
    new = job(max_attempts=5)
    await backend.enqueue([new], now=T)
    fences = []
    [c] = await backend.claim("w", ["default"], 1, 30, now=T)
    fences.append(c.fence)
    assert await backend.release(new.id, c.fence, now=T + 1)
    [c] = await backend.claim("w", ["default"], 1, 30, now=T + 2)
    fences.append(c.fence)
    await backend.fail(new.id, c.fence, error(), retry_delay=0, now=T + 3)
    [c] = await backend.claim("w", ["default"], 1, 30, now=T + 4)
    fences.append(c.fence)
    await backend.recover_expired(5, now=T + 100)
    [c] = await backend.claim("w", ["default"], 1, 30, now=T + 101)
    fences.append(c.fence)
    assert fences == sorted(set(fences)), fences
    record = await backend.get_job(new.id)
    assert record is not None and record.fence == fences[-1]


async def test_concurrent_claims_never_hand_out_a_job_twice(
    backend: Backend, backend_factory: BackendFactory
) -> None:
    jobs = [job(priority=i % 3) for i in range(40)]
    await backend.enqueue(jobs, now=T)
    clients = [backend_factory.create() for _ in range(3)]
    for client in clients:
        await client.open()
    try:

        async def drain(client: Backend, worker: str) -> list[str]:
            got: list[str] = []
            while batch := await client.claim(worker, ["default"], 3, 30, now=T):
                got.extend(c.id for c in batch)
            return got

        results = await asyncio.gather(
            *(drain(c, f"w{i}") for i, c in enumerate([backend, *clients]))
        )
    finally:
        for client in clients:
            await client.close()
    claimed = [job_id for got in results for job_id in got]
    assert sorted(claimed) == sorted(j.id for j in jobs)
    records = await backend.list_jobs(JobFilter(), limit=100)
    assert {r.state for r in records} == {JobState.RUNNING}
    assert {r.attempts for r in records} == {1}


@pytest.mark.parametrize("limit", [0, -1])
async def test_claim_with_no_room_touches_nothing(backend: Backend, limit: int) -> None:
    ready, due, stale = job(), job(run_at=T + 1), job(expires_at=T + 1)
    await backend.enqueue([ready, due, stale], now=T)
    before = await backend.list_jobs(JobFilter())
    assert await backend.claim("w", ["default"], limit, 30, now=T + 5) == []
    assert await backend.list_jobs(JobFilter()) == before


async def test_order_holds_at_extreme_priorities_and_close_run_ats(backend: Backend) -> None:
    top, bottom = 2**15 - 1, -(2**15)
    jobs = {
        "bottom": job(priority=bottom, run_at=T - 86400 * 365),
        "top-later": job(priority=top, run_at=T + 0.002),
        "top-earlier": job(priority=top, run_at=T + 0.001),
        "top-same-a": job(priority=top, run_at=T + 0.002),
        "next": job(priority=top - 1, run_at=T - 1000),
        "bottom-b": job(priority=bottom, run_at=T - 86400 * 365),
        "zero": job(priority=0, run_at=T + 0.003),
    }
    await backend.enqueue(list(jobs.values()), now=T - 86400 * 366)
    names = {j.id: name for name, j in jobs.items()}
    claimed = await backend.claim("w", ["default"], 10, 30, now=T + 1)
    assert [names[c.id] for c in claimed] == [
        "top-earlier",
        "top-later",
        "top-same-a",
        "next",
        "zero",
        "bottom",
        "bottom-b",
    ]


async def test_ids_need_not_come_from_the_id_generator(backend: Backend) -> None:
    custom = [job(id=i) for i in ("job-2", "job-10", "job:1", "JOB'3")]
    results = await backend.enqueue(custom, now=T)
    assert all(r.created for r in results)
    listed = await backend.list_jobs(JobFilter())
    assert [r.id for r in listed] == sorted((j.id for j in custom), reverse=True)
    claimed = await backend.claim("w", ["default"], 10, 30, now=T)
    assert [c.id for c in claimed] == sorted(j.id for j in custom)
    for c in claimed:
        assert await backend.complete(c.id, c.fence, c.id.encode(), now=T + 1)
        record = await backend.get_job(c.id)
        assert record is not None and record.result == c.id.encode()
