"""Complete and fail: results, retries with and without backoff, terminal states, dead letters."""

from __future__ import annotations

import pytest

from conveyor.backends import Backend
from conveyor.domain.job import ClaimedJob, JobFilter
from conveyor.domain.states import JobState

from ._support import T, approx_t, error, job


async def _claimed(backend: Backend, **fields: object) -> ClaimedJob:
    new = job(**fields)  # type: ignore[arg-type]
    await backend.enqueue([new], now=T)
    [claimed] = await backend.claim("w", [new.queue], 1, 30, now=T + 1)
    assert claimed.id == new.id
    return claimed


@pytest.mark.parametrize("result", [b"\x00result\xff", b"", None], ids=["bytes", "empty", "none"])
async def test_complete_stores_the_result(backend: Backend, result: bytes | None) -> None:
    claimed = await _claimed(backend)
    assert await backend.complete(claimed.id, claimed.fence, result, now=T + 3)
    record = await backend.get_job(claimed.id)
    assert record is not None
    assert record.state is JobState.COMPLETED
    assert record.result == result
    assert record.finished_at == approx_t(T + 3)
    assert record.started_at == approx_t(T + 1)
    assert record.lease_owner is None and record.lease_until is None
    assert record.attempts == 1
    assert record.error is None and record.errors == ()


async def test_complete_twice_stores_the_first_and_answers_true_again(backend: Backend) -> None:
    claimed = await _claimed(backend)
    assert await backend.complete(claimed.id, claimed.fence, b"one", now=T + 2)
    # A repeat under the same fence (a lost reply) answers as the first; nothing changes.
    assert await backend.complete(claimed.id, claimed.fence, b"two", now=T + 3)
    record = await backend.get_job(claimed.id)
    assert record is not None and record.result == b"one"
    assert record.finished_at == approx_t(T + 2)


async def test_fail_without_retry_dead_letters(backend: Backend) -> None:
    claimed = await _claimed(backend, max_attempts=1)
    err = error("timeout", "took too long", attempt=1, at=T + 4)
    state = await backend.fail(
        claimed.id, claimed.fence, err, retry_delay=None, now=T + 4, dead_letter_queue="dlq:mail"
    )
    assert state is JobState.FAILED
    record = await backend.get_job(claimed.id)
    assert record is not None
    assert record.state is JobState.FAILED
    assert record.error == err
    assert record.errors == (err,)
    assert record.finished_at == approx_t(T + 4)
    assert record.dead_letter_queue == "dlq:mail"
    assert record.lease_owner is None and record.lease_until is None
    assert record.attempts == 1
    assert record.result is None


async def test_fail_without_label_has_no_dead_letter_queue(backend: Backend) -> None:
    claimed = await _claimed(backend)
    assert await backend.fail(claimed.id, claimed.fence, error(), retry_delay=None, now=T + 2) == (
        JobState.FAILED
    )
    record = await backend.get_job(claimed.id)
    assert record is not None and record.dead_letter_queue is None


async def test_fail_into_cancelled_ignores_the_dead_letter_label(backend: Backend) -> None:
    claimed = await _claimed(backend)
    err = error("cancelled", "stop")
    state = await backend.fail(
        claimed.id,
        claimed.fence,
        err,
        retry_delay=None,
        now=T + 2,
        terminal=JobState.CANCELLED,
        dead_letter_queue="dlq",
    )
    assert state is JobState.CANCELLED
    record = await backend.get_job(claimed.id)
    assert record is not None
    assert record.state is JobState.CANCELLED
    assert record.dead_letter_queue is None
    assert record.error == err and record.finished_at == approx_t(T + 2)


@pytest.mark.parametrize("delay", [0.0, -5.0], ids=["zero", "negative"])
async def test_fail_with_immediate_retry_requeues(backend: Backend, delay: float) -> None:
    claimed = await _claimed(backend, max_attempts=3)
    err = error(attempt=1, at=T + 2)
    assert await backend.fail(claimed.id, claimed.fence, err, retry_delay=delay, now=T + 2) == (
        JobState.QUEUED
    )
    record = await backend.get_job(claimed.id)
    assert record is not None
    assert record.state is JobState.QUEUED
    assert record.run_at == approx_t(T + 2)
    assert record.attempts == 1
    assert record.error == err and record.errors == (err,)
    assert record.finished_at is None
    assert record.lease_owner is None and record.lease_until is None
    [again] = await backend.claim("w", ["default"], 1, 30, now=T + 2)
    assert again.id == claimed.id and again.attempt == 2
    assert again.fence > claimed.fence


async def test_fail_with_backoff_schedules_the_retry(backend: Backend) -> None:
    claimed = await _claimed(backend, max_attempts=3)
    assert await backend.fail(claimed.id, claimed.fence, error(), retry_delay=5, now=T + 2) == (
        JobState.SCHEDULED
    )
    record = await backend.get_job(claimed.id)
    assert record is not None
    assert record.state is JobState.SCHEDULED
    assert record.run_at == approx_t(T + 7)
    assert record.finished_at is None
    assert await backend.claim("w", ["default"], 1, 30, now=T + 6.5) == []
    [again] = await backend.claim("w", ["default"], 1, 30, now=T + 7)
    assert again.attempt == 2


async def test_retry_after_backoff_queues_behind_older_jobs(backend: Backend) -> None:
    claimed = await _claimed(backend, max_attempts=3)
    await backend.fail(claimed.id, claimed.fence, error(), retry_delay=5, now=T + 2)
    waiting = job(run_at=T + 3)
    await backend.enqueue([waiting], now=T + 2)
    order = await backend.claim("w", ["default"], 5, 30, now=T + 10)
    # Equal priority: run-at decides, so the retry (run-at T+7) follows the job due at T+3.
    assert [c.id for c in order] == [waiting.id, claimed.id]


async def test_errors_accumulate_across_attempts(backend: Backend) -> None:
    first = await _claimed(backend, max_attempts=3)
    errors = [error(message=f"boom {n}", attempt=n, at=T + n) for n in (1, 2, 3)]
    assert await backend.fail(first.id, first.fence, errors[0], retry_delay=0, now=T + 1)
    [second] = await backend.claim("w", ["default"], 1, 30, now=T + 2)
    assert await backend.fail(second.id, second.fence, errors[1], retry_delay=1, now=T + 2)
    [third] = await backend.claim("w", ["default"], 1, 30, now=T + 3)
    assert third.attempt == 3
    assert (
        await backend.fail(third.id, third.fence, errors[2], retry_delay=None, now=T + 3)
        == JobState.FAILED
    )
    record = await backend.get_job(first.id)
    assert record is not None
    assert record.errors == tuple(errors)
    assert record.error == errors[2]
    assert record.attempts == 3


async def test_error_without_traceback_round_trips(backend: Backend) -> None:
    claimed = await _claimed(backend)
    err = error()
    bare = type(err)(code="unknown_task", type="", message="", traceback=None, attempt=0, at=0.0)
    await backend.fail(claimed.id, claimed.fence, bare, retry_delay=None, now=T + 2)
    record = await backend.get_job(claimed.id)
    assert record is not None and record.error == bare and record.errors == (bare,)


async def test_failed_jobs_are_listed_by_error_code(backend: Backend) -> None:
    a = await _claimed(backend)
    b = await _claimed(backend)
    await backend.fail(a.id, a.fence, error("timeout"), retry_delay=None, now=T + 2)
    await backend.fail(b.id, b.fence, error("error"), retry_delay=None, now=T + 2)
    timeouts = await backend.list_jobs(JobFilter(error_code="timeout"))
    assert [r.id for r in timeouts] == [a.id]
