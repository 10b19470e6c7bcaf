"""Retry delays through a real worker, on a fake clock: the gap between two attempts of a job
is the one its policy gives for the attempt that failed — exponential, linear, capped by
``max_delay``, and jittered within ±25 %.

These go through the whole worker path (claim, handler, failure decision, fenced ``fail`` with
the delay, promotion by the next claim), so an off-by-one in which attempt the delay is
computed for (``delay_for(attempt + 1)``) fails them.
"""

from __future__ import annotations

from typing import Any

import pytest

from conveyor import JobState, RetryPolicy
from conveyor.domain.clock import FakeClock
from conveyor.testing import memory_app, run_until_idle


async def _gaps(policy: RetryPolicy, jobs: int = 1) -> list[list[float]]:
    """Run ``jobs`` always-failing jobs to the end on a fake clock; for each, the gaps between
    the moment an attempt failed and the run-at of the next one."""
    clock = FakeClock()
    app = memory_app(clock=clock)

    @app.task(retry=policy)
    async def always_fails() -> None:
        raise ConnectionError("down")

    handles = [await always_fails.enqueue() for _ in range(jobs)]
    gaps: list[list[float]] = [[] for _ in handles]
    while True:
        await run_until_idle(app)
        infos = [await h.info() for h in handles]
        waiting = [i for i in infos if i.state is JobState.SCHEDULED]
        for n, info in enumerate(infos):
            if info.state is JobState.SCHEDULED and len(gaps[n]) < info.record.attempts:
                gaps[n].append(info.record.run_at - clock.now())
        if not waiting:
            assert all(i.state is JobState.FAILED for i in infos)
            return gaps
        clock.set(min(i.record.run_at for i in waiting))


async def test_exponential_backoff_between_attempts() -> None:
    policy = RetryPolicy.build(5, backoff="exponential", delay="10s", jitter=False)
    assert await _gaps(policy) == [[10.0, 20.0, 40.0, 80.0]]


async def test_exponential_backoff_with_its_own_multiplier() -> None:
    policy = RetryPolicy.build(4, backoff="exponential", delay=2, multiplier=3, jitter=False)
    assert await _gaps(policy) == [[2.0, 6.0, 18.0]]


async def test_linear_backoff_between_attempts() -> None:
    policy = RetryPolicy.build(4, backoff="linear", delay="5s", jitter=False)
    assert await _gaps(policy) == [[5.0, 10.0, 15.0]]


async def test_fixed_backoff_between_attempts() -> None:
    policy = RetryPolicy.build(3, backoff="fixed", delay="7s", jitter=False)
    assert await _gaps(policy) == [[7.0, 7.0]]


async def test_max_delay_caps_the_growth() -> None:
    policy = RetryPolicy.build(6, backoff="exponential", delay="10s", max_delay="30s", jitter=False)
    assert await _gaps(policy) == [[10.0, 20.0, 30.0, 30.0, 30.0]]


async def test_a_backoff_function_gets_the_attempt_that_failed() -> None:
    seen: list[int] = []

    def backoff(attempt: int) -> float:
        seen.append(attempt)
        return 100.0 * attempt

    policy = RetryPolicy.build(4, backoff=backoff, jitter=False)
    assert await _gaps(policy) == [[100.0, 200.0, 300.0]]
    assert seen == [1, 2, 3]


@pytest.mark.parametrize(
    ("backoff", "bases"),
    [("exponential", [8.0, 16.0, 32.0]), ("linear", [8.0, 16.0, 24.0])],
)
async def test_jitter_stays_within_a_quarter_of_the_delay(backoff: Any, bases: list[float]) -> None:
    policy = RetryPolicy.build(4, backoff=backoff, delay="8s", jitter=True)
    gaps = await _gaps(policy, jobs=12)
    for job_gaps in gaps:
        assert len(job_gaps) == len(bases)
        for gap, base in zip(job_gaps, bases, strict=True):
            assert 0.75 * base <= gap <= 1.25 * base, (gap, base)
    # ...and it is applied: twelve jobs do not all wait exactly the base delay.
    assert any(gap != base for job_gaps in gaps for gap, base in zip(job_gaps, bases, strict=True))


async def test_jitter_is_applied_after_the_cap() -> None:
    policy = RetryPolicy.build(5, backoff="exponential", delay="10s", max_delay="12s")
    for job_gaps in await _gaps(policy, jobs=6):
        assert all(0.75 * 12 <= g <= 1.25 * 12 for g in job_gaps[1:]), job_gaps
