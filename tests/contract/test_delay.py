"""Enqueue with a delay: run-at is the store's now plus the delay, not the producer's guess."""

from __future__ import annotations

import time

import pytest

from conveyor.backends import Backend
from conveyor.domain.states import JobState

from ._support import T, approx_t, job


@pytest.mark.parametrize("shape", ["one", "batch", "batch-keyed"])
async def test_a_delay_counts_from_the_stores_now(backend: Backend, shape: str) -> None:
    # One job, a batch, a batch with idempotency keys: the SQL backends build each differently.
    keyed = shape == "batch-keyed"
    size = 1 if shape == "one" else 3
    later = [job(delay=5.0, idempotency_key=f"k{i}" if keyed else None) for i in range(size)]
    results = await backend.enqueue(later, now=T)
    assert [r.state for r in results] == [JobState.SCHEDULED] * size
    for new in later:
        record = await backend.get_job(new.id)
        assert record is not None and record.run_at == approx_t(T + 5)
    assert await backend.claim("w", ["default"], 10, 30, now=T + 4) == []
    claimed = await backend.claim("w", ["default"], 10, 30, now=T + 5)
    assert sorted(c.id for c in claimed) == sorted(j.id for j in later)


async def test_a_given_run_at_wins_over_a_delay(backend: Backend) -> None:
    new = job(run_at=T + 2, delay=100.0)
    await backend.enqueue([new], now=T)
    record = await backend.get_job(new.id)
    assert record is not None and record.run_at == approx_t(T + 2)


async def test_a_delay_on_the_stores_own_clock(backend: Backend) -> None:
    before = time.time()
    [now, later] = [job(), job(delay=60.0)]
    results = await backend.enqueue([now, later])
    assert [r.state for r in results] == [JobState.QUEUED, JobState.SCHEDULED]
    first, second = await backend.get_job(now.id), await backend.get_job(later.id)
    assert first is not None and second is not None
    assert second.run_at == pytest.approx(first.run_at + 60.0, abs=1.0)
    assert second.run_at == pytest.approx(before + 60.0, abs=5.0)  # the store shares our host
