"""Contract of the defer capability (:class:`conveyor.backends.capabilities.Defers`), every
backend held to the memory reference: a running job handed back for later, fenced, without
counting the attempt (a payload version newer than the worker's)."""

from __future__ import annotations

from conveyor.backends import Backend
from conveyor.backends.capabilities import Defers, capability_names
from conveyor.domain.states import JobState

from .._support import T, approx_t, error, job


def _defers(backend: Backend) -> Defers:
    assert isinstance(backend, Defers), f"{type(backend).__name__} lacks the defer capability"
    return backend


async def test_every_backend_declares_the_capability(backend: Backend) -> None:
    assert "defer" in capability_names(backend)


async def test_defer_schedules_the_job_later_without_counting_the_attempt(
    backend: Backend, other_backend: Backend
) -> None:
    first = job()
    await backend.enqueue([first], now=T)
    (claimed,) = await backend.claim("w1", ["default"], 1, 30.0, now=T)
    assert claimed.attempt == 1
    assert await _defers(backend).defer(first.id, claimed.fence, 5.0, now=T + 1)
    record = await other_backend.get_job(first.id)
    assert record is not None
    assert record.state is JobState.SCHEDULED
    assert record.run_at == approx_t(T + 6)
    assert record.attempts == 0
    assert record.lease_owner is None and record.lease_until is None
    assert record.errors == ()
    # Not claimable before its time, by anyone; claimable after, as attempt 1 again.
    assert await other_backend.claim("w2", ["default"], 1, 30.0, now=T + 5) == []
    (again,) = await other_backend.claim("w2", ["default"], 1, 30.0, now=T + 6)
    assert again.id == first.id and again.attempt == 1 and again.fence > claimed.fence


async def test_defer_is_fenced(backend: Backend) -> None:
    first = job()
    await backend.enqueue([first], now=T)
    (claimed,) = await backend.claim("w1", ["default"], 1, 30.0, now=T)
    assert not await _defers(backend).defer(first.id, claimed.fence + 1, 5.0, now=T)
    assert not await _defers(backend).defer("no-such-job", 1, 5.0, now=T)
    assert await backend.fail(
        first.id, claimed.fence, error(), retry_delay=None, now=T + 1
    ) is JobState.FAILED
    assert not await _defers(backend).defer(first.id, claimed.fence, 5.0, now=T + 2)
    record = await backend.get_job(first.id)
    assert record is not None and record.state is JobState.FAILED


async def test_defer_without_delay_queues_the_job_at_once(backend: Backend) -> None:
    first = job(priority=3)
    await backend.enqueue([first], now=T)
    (claimed,) = await backend.claim("w1", ["default"], 1, 30.0, now=T)
    assert await _defers(backend).defer(first.id, claimed.fence, 0.0, now=T + 1)
    record = await backend.get_job(first.id)
    assert record is not None and record.state is JobState.QUEUED and record.attempts == 0
    (again,) = await backend.claim("w1", ["default"], 1, 30.0, now=T + 1)
    assert again.id == first.id and again.priority == 3
