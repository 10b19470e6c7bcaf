"""Operating the queue: cancel, retry from the dead-letter set, delete."""

from __future__ import annotations

import pytest

from conveyor.backends import Backend, CancelOutcome
from conveyor.domain.job import JobFilter, JobRecord
from conveyor.domain.states import STORED_STATES, JobState

from ._support import T, approx_t, error, job


async def _job_in(
    backend: Backend,
    state: JobState,
    *,
    task: str = "tasks.work",
    queue: str = "default",
    code: str = "error",
    dlq: str | None = None,
    at: float = T,
) -> str:
    """A job of ``task``/``queue`` moved to ``state`` at time ``at`` (ends finished at ``at+1``)."""
    new = job(
        task,
        queue,
        run_at=at + 100 if state is JobState.SCHEDULED else None,
        blocked=state is JobState.BLOCKED,
        expires_at=at + 0.5 if state is JobState.EXPIRED else None,
        max_attempts=3,
    )
    await backend.enqueue([new], now=at)
    if state is JobState.EXPIRED:
        assert await backend.claim("w", [queue], 1, 30, now=at + 1, tasks=["<none>"]) == []
    elif state in (JobState.RUNNING, JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED):
        [claimed] = await backend.claim("w", [queue], 1, 30, now=at, tasks=[task])
        assert claimed.id == new.id
        if state is JobState.COMPLETED:
            assert await backend.complete(new.id, claimed.fence, b"r", now=at + 1)
        elif state is not JobState.RUNNING:
            err = error(code, attempt=1, at=at + 1)
            assert (
                await backend.fail(
                    new.id,
                    claimed.fence,
                    err,
                    retry_delay=None,
                    now=at + 1,
                    terminal=state,
                    dead_letter_queue=dlq,
                )
                is state
            )
    record = await backend.get_job(new.id)
    assert record is not None and record.state is state
    return new.id


async def _get(backend: Backend, job_id: str) -> JobRecord:
    record = await backend.get_job(job_id)
    assert record is not None
    return record


# -- cancel ------------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [JobState.QUEUED, JobState.SCHEDULED, JobState.BLOCKED])
async def test_cancel_a_waiting_job(backend: Backend, state: JobState) -> None:
    job_id = await _job_in(backend, state)
    assert await backend.cancel(job_id, "not needed", now=T + 5) is CancelOutcome.CANCELLED
    record = await _get(backend, job_id)
    assert record.state is JobState.CANCELLED
    assert record.finished_at == approx_t(T + 5)
    assert record.cancel_reason == "not needed"
    assert record.error is not None and record.error.code == "cancelled"
    assert record.error.message == "not needed"
    assert record.errors == (record.error,)
    assert record.attempts == 0
    assert await backend.claim("w", ["default"], 5, 30, now=T + 500) == []


async def test_cancel_without_reason(backend: Backend) -> None:
    job_id = await _job_in(backend, JobState.QUEUED)
    assert await backend.cancel(job_id, now=T + 5) is CancelOutcome.CANCELLED
    record = await _get(backend, job_id)
    assert record.cancel_reason is None
    assert record.error is not None and record.error.code == "cancelled"


async def test_cancel_a_running_job_asks_its_worker(backend: Backend) -> None:
    job_id = await _job_in(backend, JobState.RUNNING)
    before = await _get(backend, job_id)
    assert await backend.cancel(job_id, "stop", now=T + 5) is CancelOutcome.REQUESTED
    record = await _get(backend, job_id)
    assert record.state is JobState.RUNNING
    assert record.cancel_requested and record.cancel_reason == "stop"
    assert record.finished_at is None and record.error is None
    assert record.fence == before.fence and record.lease_owner == "w"
    # Asking twice changes nothing more; the worker then finishes the cancellation itself.
    assert await backend.cancel(job_id, "stop", now=T + 6) is CancelOutcome.REQUESTED
    state = await backend.fail(
        job_id,
        record.fence,
        error("cancelled", "stop"),
        retry_delay=None,
        now=T + 7,
        terminal=JobState.CANCELLED,
    )
    assert state is JobState.CANCELLED


@pytest.mark.parametrize(
    "state", [JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.EXPIRED]
)
async def test_cancel_a_finished_job_is_refused(backend: Backend, state: JobState) -> None:
    job_id = await _job_in(backend, state)
    before = await _get(backend, job_id)
    assert await backend.cancel(job_id, "late", now=T + 5) is CancelOutcome.NOT_CANCELLABLE
    assert await _get(backend, job_id) == before


async def test_cancel_an_unknown_job(backend: Backend) -> None:
    assert await backend.cancel("f" * 32, now=T) is CancelOutcome.NOT_FOUND


# -- retry_jobs ------------------------------------------------------------------------------


async def test_retry_moves_only_retryable_states_back_to_queued(backend: Backend) -> None:
    ids = {state: await _job_in(backend, state, queue=f"q-{state}") for state in STORED_STATES}
    retried = await backend.retry_jobs(JobFilter(), now=T + 50)
    expected = {ids[JobState.FAILED], ids[JobState.CANCELLED], ids[JobState.EXPIRED]}
    assert sorted(retried) == sorted(expected)
    for state, job_id in ids.items():
        record = await _get(backend, job_id)
        assert record.state is (JobState.QUEUED if job_id in expected else state)


async def test_retry_even_when_the_filter_names_other_states(backend: Backend) -> None:
    running = await _job_in(backend, JobState.RUNNING)
    done = await _job_in(backend, JobState.COMPLETED)
    flt = JobFilter(states=(JobState.RUNNING, JobState.COMPLETED), ids=(running, done))
    assert await backend.retry_jobs(flt, now=T + 50) == []
    assert (await _get(backend, running)).state is JobState.RUNNING
    assert (await _get(backend, done)).state is JobState.COMPLETED


async def test_retry_resets_the_dead_letter_but_keeps_history(backend: Backend) -> None:
    job_id = await _job_in(backend, JobState.FAILED, dlq="dlq")
    before = await _get(backend, job_id)
    assert await backend.retry_jobs(JobFilter(ids=(job_id,)), now=T + 50) == [job_id]
    record = await _get(backend, job_id)
    assert record.state is JobState.QUEUED
    assert record.run_at == approx_t(T + 50)
    assert record.attempts == 1
    assert record.max_attempts == 3  # attempts were left: unchanged
    assert record.finished_at is None
    assert record.dead_letter_queue is None
    assert record.stalls == 0
    assert record.error == before.error and record.errors == before.errors
    [claimed] = await backend.claim("w", ["default"], 1, 30, now=T + 50)
    assert claimed.id == job_id and claimed.attempt == 2


async def test_retry_with_reset_attempts(backend: Backend) -> None:
    job_id = await _job_in(backend, JobState.FAILED)
    assert await backend.retry_jobs(JobFilter(), reset_attempts=True, now=T + 50) == [job_id]
    assert (await _get(backend, job_id)).attempts == 0
    assert (await _get(backend, job_id)).max_attempts == 3
    [claimed] = await backend.claim("w", ["default"], 1, 30, now=T + 50)
    assert claimed.attempt == 1


async def test_retry_of_a_job_out_of_attempts_grants_one_more_and_says_so(
    backend: Backend,
) -> None:
    new = job(max_attempts=2)
    await backend.enqueue([new], now=T)
    for n in (1, 2):
        [claimed] = await backend.claim("w", ["default"], 1, 30, now=T + n)
        delay = 0.0 if n == 1 else None
        await backend.fail(new.id, claimed.fence, error(attempt=n), retry_delay=delay, now=T + n)
    assert (await _get(backend, new.id)).state is JobState.FAILED
    assert await backend.retry_jobs(JobFilter(), now=T + 50) == [new.id]
    record = await _get(backend, new.id)
    assert (record.attempts, record.max_attempts) == (2, 3)  # "3/3" when it runs, not "3/2"
    [claimed] = await backend.claim("w", ["default"], 1, 30, now=T + 50)
    assert (claimed.attempt, claimed.max_attempts) == (3, 3)
    assert await backend.fail(new.id, claimed.fence, error(), retry_delay=None, now=T + 51)
    assert await backend.retry_jobs(JobFilter(), reset_attempts=True, now=T + 60) == [new.id]
    record = await _get(backend, new.id)
    assert (record.attempts, record.max_attempts) == (0, 3)


async def test_retry_clears_a_cancellation(backend: Backend) -> None:
    job_id = await _job_in(backend, JobState.RUNNING)
    await backend.cancel(job_id, "stop", now=T + 1)
    [recovered] = await backend.recover_expired(3, now=T + 100)
    assert recovered.state is JobState.CANCELLED
    assert await backend.retry_jobs(JobFilter(), now=T + 101) == [job_id]
    record = await _get(backend, job_id)
    assert record.state is JobState.QUEUED
    assert not record.cancel_requested and record.cancel_reason is None
    assert record.stalls == 0
    [claimed] = await backend.claim("w", ["default"], 1, 30, now=T + 101)
    [status] = await backend.heartbeat("w", [(claimed.id, claimed.fence)], 30, now=T + 102)
    assert status.held and not status.cancel_requested


async def test_retry_filters(backend: Backend) -> None:
    a = await _job_in(backend, JobState.FAILED, task="a", queue="q1", code="timeout")
    b = await _job_in(backend, JobState.FAILED, task="b", queue="q1", code="error")
    c = await _job_in(backend, JobState.FAILED, task="a", queue="q2", code="error")
    d = await _job_in(backend, JobState.CANCELLED, task="a", queue="q1", code="cancelled")
    assert await backend.retry_jobs(JobFilter(queue="q2"), now=T + 50) == [c]
    assert await backend.retry_jobs(JobFilter(error_code="timeout"), now=T + 50) == [a]
    assert await backend.retry_jobs(JobFilter(states=(JobState.CANCELLED,)), now=T + 50) == [d]
    assert await backend.retry_jobs(JobFilter(task="a"), now=T + 50) == []
    assert await backend.retry_jobs(JobFilter(task="b", queue="q2"), now=T + 50) == []
    assert await backend.retry_jobs(JobFilter(task="b", queue="q1"), now=T + 50) == [b]


async def test_retry_honours_its_limit(backend: Backend) -> None:
    ids = [await _job_in(backend, JobState.FAILED) for _ in range(3)]
    first = await backend.retry_jobs(JobFilter(), now=T + 50, limit=2)
    assert len(first) == 2 and set(first) <= set(ids)
    second = await backend.retry_jobs(JobFilter(), now=T + 50, limit=2)
    assert set(first) | set(second) == set(ids) and len(second) == 1


async def test_retried_jobs_are_ordered_by_their_new_run_at(backend: Backend) -> None:
    failed = await _job_in(backend, JobState.FAILED)
    fresh = job()
    await backend.enqueue([fresh], now=T + 10)
    await backend.retry_jobs(JobFilter(), now=T + 20)
    claimed = await backend.claim("w", ["default"], 2, 30, now=T + 20)
    assert [c.id for c in claimed] == [fresh.id, failed]


# -- delete_jobs ----------------------------------------------------------------------------


async def test_delete_removes_only_terminal_jobs(backend: Backend) -> None:
    ids = {state: await _job_in(backend, state, queue=f"q-{state}") for state in STORED_STATES}
    assert await backend.delete_jobs(JobFilter()) == 4
    for state, job_id in ids.items():
        record = await backend.get_job(job_id)
        if state.is_terminal:
            assert record is None
        else:
            assert record is not None and record.state is state


async def test_delete_filters_and_limit(backend: Backend) -> None:
    old = await _job_in(backend, JobState.COMPLETED, queue="q1", at=T)
    new = await _job_in(backend, JobState.COMPLETED, queue="q1", at=T + 100)
    other = await _job_in(backend, JobState.FAILED, queue="q2", at=T)
    assert await backend.delete_jobs(JobFilter(finished_before=T + 1)) == 0  # finished at T+1
    assert await backend.delete_jobs(JobFilter(finished_before=T + 50, queue="q1")) == 1
    assert await backend.get_job(old) is None
    assert await backend.delete_jobs(JobFilter(states=(JobState.FAILED,), queue="q1")) == 0
    assert await backend.delete_jobs(JobFilter(), limit=1) == 1
    assert await backend.delete_jobs(JobFilter(), limit=5) == 1
    assert await backend.get_job(new) is None and await backend.get_job(other) is None
    assert await backend.list_jobs(JobFilter()) == []


async def test_delete_by_ids_and_task(backend: Backend) -> None:
    a = await _job_in(backend, JobState.EXPIRED, task="a")
    b = await _job_in(backend, JobState.CANCELLED, task="b")
    assert await backend.delete_jobs(JobFilter(ids=(a, "missing"), task="b")) == 0
    assert await backend.delete_jobs(JobFilter(ids=(a, b), task="b")) == 1
    assert await backend.get_job(b) is None
    assert await backend.get_job(a) is not None


async def test_deleted_jobs_leave_no_trace(backend: Backend) -> None:
    job_id = await _job_in(backend, JobState.FAILED)
    assert await backend.delete_jobs(JobFilter(ids=(job_id,))) == 1
    assert await backend.count_jobs() == []
    assert await backend.retry_jobs(JobFilter(), now=T + 10) == []
    assert await backend.cancel(job_id, now=T + 10) is CancelOutcome.NOT_FOUND
    await backend.append_logs(job_id, [])
    assert await backend.get_job(job_id) is None


@pytest.mark.parametrize("limit", [0, -1])
async def test_bulk_operations_with_no_room_touch_nothing(backend: Backend, limit: int) -> None:
    failed = await _job_in(backend, JobState.FAILED)
    done = await _job_in(backend, JobState.COMPLETED)
    assert await backend.retry_jobs(JobFilter(), now=T + 50, limit=limit) == []
    assert await backend.delete_jobs(JobFilter(), limit=limit) == 0
    assert (await _get(backend, failed)).state is JobState.FAILED
    assert (await _get(backend, done)).state is JobState.COMPLETED
