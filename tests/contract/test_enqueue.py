"""Enqueue: what is stored, in which state, and idempotency keys."""

from __future__ import annotations

import time

import pytest

from conveyor.backends import Backend, CancelOutcome
from conveyor.domain.job import EnqueueResult, JobFilter, JobRecord
from conveyor.domain.states import JobState

from ._support import T, approx_t, error, job, normalized


async def test_enqueue_stores_every_field_verbatim(backend: Backend) -> None:
    new = job(
        "mail.send",
        "emails",
        b"\x00\x01payload\xff",
        priority=7,
        max_attempts=5,
        timeout=30.5,
        expires_at=T + 3600,
        idempotency_key="welcome:42",
        concurrency_key="user:42",
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        metadata={"int": 1, "list": [1, "x", None, 2.5], "nested": {"flag": True, "s": "é"}},
        workflow_id="wf-1",
        parents=("parent-a", "parent-b"),
        payload_version=3,
    )
    assert await backend.enqueue([new], now=T) == [EnqueueResult(new.id, True, JobState.QUEUED)]

    record = await backend.get_job(new.id)
    assert record is not None
    expected = JobRecord(
        id=new.id,
        task="mail.send",
        queue="emails",
        state=JobState.QUEUED,
        payload=b"\x00\x01payload\xff",
        priority=7,
        run_at=T,
        attempts=0,
        max_attempts=5,
        created_at=T,
        timeout=30.5,
        expires_at=T + 3600,
        idempotency_key="welcome:42",
        concurrency_key="user:42",
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        metadata={"int": 1, "list": [1, "x", None, 2.5], "nested": {"flag": True, "s": "é"}},
        workflow_id="wf-1",
        parents=("parent-a", "parent-b"),
        payload_version=3,
    )
    assert normalized(record) == normalized(expected)


async def test_enqueue_defaults_leave_optional_fields_empty(backend: Backend) -> None:
    new = job()
    await backend.enqueue([new], now=T)
    record = await backend.get_job(new.id)
    assert record is not None
    assert (record.priority, record.max_attempts, record.payload_version) == (0, 1, 1)
    assert record.timeout is None and record.expires_at is None
    assert record.idempotency_key is None and record.concurrency_key is None
    assert record.trace_id is None and record.workflow_id is None
    assert record.metadata == {} and record.parents == ()
    assert record.result is None and record.error is None and record.errors == ()
    assert record.progress is None and record.logs == ()
    assert record.lease_owner is None and record.lease_until is None
    assert record.started_at is None and record.finished_at is None
    assert record.stalls == 0 and not record.cancel_requested and record.cancel_reason is None
    assert record.dead_letter_queue is None


@pytest.mark.parametrize(
    ("run_at", "blocked", "state"),
    [
        (None, False, JobState.QUEUED),
        (T - 60, False, JobState.QUEUED),
        (T, False, JobState.QUEUED),
        (T + 0.5, False, JobState.SCHEDULED),
        (T + 86400, False, JobState.SCHEDULED),
        (None, True, JobState.BLOCKED),
        (T + 60, True, JobState.BLOCKED),
    ],
    ids=["now", "past", "exactly-now", "half-second", "tomorrow", "blocked", "blocked-later"],
)
async def test_enqueue_initial_state_follows_run_at(
    backend: Backend, run_at: float | None, blocked: bool, state: JobState
) -> None:
    new = job(run_at=run_at, blocked=blocked)
    [result] = await backend.enqueue([new], now=T)
    assert result == EnqueueResult(new.id, True, state)
    record = await backend.get_job(new.id)
    assert record is not None
    assert record.state is state
    assert record.run_at == approx_t(T if run_at is None else run_at)
    assert record.created_at == approx_t(T)


async def test_enqueue_with_store_clock_uses_real_time(backend: Backend) -> None:
    before = time.time()
    now_job, later_job = job(), job(run_at=before + 3600)
    results = await backend.enqueue([now_job, later_job])
    after = time.time()
    assert [r.state for r in results] == [JobState.QUEUED, JobState.SCHEDULED]
    record = await backend.get_job(now_job.id)
    assert record is not None
    # The store's clock (same host) may differ from ours by a little; never by minutes.
    assert before - 1.0 <= record.created_at <= after + 1.0
    assert before - 1.0 <= record.run_at <= after + 1.0


async def test_enqueue_batch_returns_one_result_per_job_in_order(backend: Backend) -> None:
    batch = [
        job(run_at=T + 10),
        job(),
        job(blocked=True),
        job(queue="other", priority=-3),
    ]
    results = await backend.enqueue(batch, now=T)
    assert results == [
        EnqueueResult(batch[0].id, True, JobState.SCHEDULED),
        EnqueueResult(batch[1].id, True, JobState.QUEUED),
        EnqueueResult(batch[2].id, True, JobState.BLOCKED),
        EnqueueResult(batch[3].id, True, JobState.QUEUED),
    ]
    listed = await backend.list_jobs(JobFilter(), limit=10)
    assert sorted(r.id for r in listed) == sorted(j.id for j in batch)


async def test_enqueue_empty_batch(backend: Backend) -> None:
    assert await backend.enqueue([], now=T) == []
    assert await backend.list_jobs(JobFilter()) == []


async def test_enqueue_same_id_twice_keeps_the_first(backend: Backend) -> None:
    first = job(payload=b"first")
    await backend.enqueue([first], now=T)
    again = job(payload=b"second", id=first.id, run_at=T + 100)
    assert await backend.enqueue([again], now=T + 1) == [
        EnqueueResult(first.id, False, JobState.QUEUED)
    ]
    record = await backend.get_job(first.id)
    assert record is not None
    assert record.payload == b"first"
    assert record.created_at == approx_t(T)
    assert len(await backend.list_jobs(JobFilter())) == 1


# -- idempotency keys ------------------------------------------------------------------------


async def _bring_to(backend: Backend, key: str, state: JobState) -> str:
    """Enqueue a job holding ``key`` and move it to ``state``; its id."""
    holder = job(
        idempotency_key=key,
        run_at=T + 100 if state is JobState.SCHEDULED else None,
        blocked=state is JobState.BLOCKED,
        expires_at=T + 1 if state is JobState.EXPIRED else None,
    )
    await backend.enqueue([holder], now=T)
    if state is JobState.EXPIRED:
        assert await backend.claim("w", ["default"], 1, 30, now=T + 2) == []
    elif state in (JobState.RUNNING, JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED):
        [claimed] = await backend.claim("w", ["default"], 1, 30, now=T)
        if state is JobState.COMPLETED:
            assert await backend.complete(holder.id, claimed.fence, b"r", now=T + 1)
        elif state is not JobState.RUNNING:
            outcome = await backend.fail(
                holder.id, claimed.fence, error(), retry_delay=None, now=T + 1, terminal=state
            )
            assert outcome is state
    record = await backend.get_job(holder.id)
    assert record is not None and record.state is state
    return holder.id


@pytest.mark.parametrize(
    "state",
    [
        JobState.QUEUED,
        JobState.SCHEDULED,
        JobState.BLOCKED,
        JobState.RUNNING,
        JobState.COMPLETED,
    ],
)
async def test_key_held_by_a_live_or_completed_job_returns_it(
    backend: Backend, state: JobState
) -> None:
    holder_id = await _bring_to(backend, "order:1", state)
    duplicate = job(idempotency_key="order:1", payload=b"dup")
    assert await backend.enqueue([duplicate], now=T + 5) == [EnqueueResult(holder_id, False, state)]
    assert await backend.get_job(duplicate.id) is None
    assert [r.id for r in await backend.list_jobs(JobFilter())] == [holder_id]


@pytest.mark.parametrize("state", [JobState.FAILED, JobState.CANCELLED, JobState.EXPIRED])
async def test_key_of_a_dead_job_is_free_again(backend: Backend, state: JobState) -> None:
    holder_id = await _bring_to(backend, "order:1", state)
    fresh = job(idempotency_key="order:1")
    assert await backend.enqueue([fresh], now=T + 5) == [
        EnqueueResult(fresh.id, True, JobState.QUEUED)
    ]
    # The new job holds the key now.
    third = job(idempotency_key="order:1")
    assert await backend.enqueue([third], now=T + 6) == [
        EnqueueResult(fresh.id, False, JobState.QUEUED)
    ]
    old = await backend.get_job(holder_id)
    assert old is not None and old.state is state


async def test_key_is_global_across_queues_and_tasks(backend: Backend) -> None:
    first = job("a", "q1", idempotency_key="k")
    other = job("b", "q2", idempotency_key="k")
    results = await backend.enqueue([first], now=T) + await backend.enqueue([other], now=T)
    assert results == [
        EnqueueResult(first.id, True, JobState.QUEUED),
        EnqueueResult(first.id, False, JobState.QUEUED),
    ]


async def test_same_key_twice_in_one_batch_first_wins(backend: Backend) -> None:
    a = job(idempotency_key="k", payload=b"a")
    plain = job()
    b = job(idempotency_key="k", payload=b"b", run_at=T + 50)
    c = job(idempotency_key="other")
    results = await backend.enqueue([a, plain, b, c], now=T)
    assert results == [
        EnqueueResult(a.id, True, JobState.QUEUED),
        EnqueueResult(plain.id, True, JobState.QUEUED),
        EnqueueResult(a.id, False, JobState.QUEUED),
        EnqueueResult(c.id, True, JobState.QUEUED),
    ]
    assert await backend.get_job(b.id) is None


async def test_key_of_a_deleted_job_is_free_again(backend: Backend) -> None:
    holder_id = await _bring_to(backend, "k", JobState.COMPLETED)
    assert await backend.delete_jobs(JobFilter(ids=(holder_id,))) == 1
    fresh = job(idempotency_key="k")
    assert await backend.enqueue([fresh], now=T + 5) == [
        EnqueueResult(fresh.id, True, JobState.QUEUED)
    ]


# One live holder per key: a job retried from the dead-letter set does not take its key back
# from a job holding it; the retry is refused for that job, naming the holder.


@pytest.mark.parametrize(
    "holder_state",
    [JobState.QUEUED, JobState.RUNNING, JobState.COMPLETED, JobState.SCHEDULED],
)
async def test_retry_of_a_job_whose_key_another_job_holds_is_refused(
    backend: Backend, holder_state: JobState
) -> None:
    old_id = await _bring_to(backend, "k", JobState.FAILED)
    newer = job(idempotency_key="k", queue="other", run_at=T + 100)
    assert (await backend.enqueue([newer], now=T + 5))[0].created
    if holder_state is not JobState.SCHEDULED:
        [claimed] = await backend.claim("w", ["other"], 1, 30, now=T + 100)
        if holder_state is JobState.COMPLETED:
            assert await backend.complete(newer.id, claimed.fence, None, now=T + 101)
        elif holder_state is JobState.QUEUED:
            assert await backend.release(newer.id, claimed.fence, now=T + 101)
    before = await backend.get_job(old_id)
    retried = await backend.retry_jobs(JobFilter(ids=(old_id,)), now=T + 6)
    assert retried == [] and retried.refused == {old_id: newer.id}
    assert await backend.get_job(old_id) == before  # left as it was
    # ...and the key stays with its holder.
    [again] = await backend.enqueue([job(idempotency_key="k")], now=T + 7)
    assert again.id == newer.id and not again.created


async def test_retry_takes_a_key_nobody_holds(backend: Backend) -> None:
    old_id = await _bring_to(backend, "k", JobState.FAILED)
    newer = job(idempotency_key="k", queue="other")
    await backend.enqueue([newer], now=T + 5)
    assert await backend.cancel(newer.id, now=T + 6) is CancelOutcome.CANCELLED
    retried = await backend.retry_jobs(JobFilter(ids=(old_id,)), now=T + 7)
    assert retried == [old_id] and retried.refused == {}
    third = job(idempotency_key="k")
    assert await backend.enqueue([third], now=T + 8) == [
        EnqueueResult(old_id, False, JobState.QUEUED)
    ]
    # The cancelled newer job cannot come back while the retried one holds the key.
    again = await backend.retry_jobs(JobFilter(ids=(newer.id,)), now=T + 9)
    assert again == [] and again.refused == {newer.id: old_id}
    assert await backend.cancel("f" * 32, now=T) is CancelOutcome.NOT_FOUND


async def test_retry_of_jobs_sharing_a_free_key_gives_it_to_the_oldest(backend: Backend) -> None:
    first = await _bring_to(backend, "k", JobState.FAILED)
    second = job(idempotency_key="k")
    await backend.enqueue([second], now=T + 5)
    [claimed] = await backend.claim("w", ["default"], 1, 30, now=T + 5)
    assert claimed.id == second.id
    assert await backend.fail(second.id, claimed.fence, error(), retry_delay=None, now=T + 6)
    plain = await _bring_to(backend, "other-key", JobState.CANCELLED)
    retried = await backend.retry_jobs(JobFilter(), now=T + 7)
    assert sorted(retried) == sorted([first, plain]) and retried.refused == {second.id: first}
    live = [
        r
        for r in await backend.list_jobs(JobFilter(states=(JobState.QUEUED,)))
        if r.idempotency_key == "k"
    ]
    assert [r.id for r in live] == [first]
