"""The autoscaling rule (:mod:`conveyor.domain.autoscale`), on a fake clock."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conveyor.domain.autoscale import (
    AutoscalePolicy,
    LoadSample,
    ScaleDecision,
    ScaleState,
    decide,
)

POLICY = AutoscalePolicy(
    min_workers=1, max_workers=4, target_wait=10, scale_down_after=60, cooldown=5
)
IDLE = LoadSample(0, 0, None)


FRESH = ScaleState()


def step(current: int, sample: LoadSample, now: float, state: ScaleState = FRESH) -> ScaleDecision:
    return decide(POLICY, current, sample, now, state, concurrency=10)


def test_outside_the_bounds_goes_back_at_once() -> None:
    assert step(0, IDLE, 0).size == 1
    assert step(7, LoadSample(500, 40, 99.0), 0).size == 4
    assert "outside the bounds" in step(0, IDLE, 0).reason


def test_depth_grows_to_the_processes_needed() -> None:
    d = step(1, LoadSample(ready=25, running=10, oldest_age=0.5), 100)
    assert d.size == 4 and "4 needed" in d.reason  # ceil(35 / 10)
    assert d.state.last_change == 100
    assert step(1, LoadSample(ready=12, running=2, oldest_age=0.5), 100).size == 2
    assert step(1, LoadSample(ready=900, running=10, oldest_age=0.5), 100).size == 4  # max


def test_a_long_wait_grows_by_one_even_when_depth_fits() -> None:
    # Few jobs, but the oldest has waited past the target: latency comes first.
    d = step(2, LoadSample(ready=1, running=3, oldest_age=12.0), 0)
    assert d.size == 3 and "oldest wait over target" in d.reason
    # A long wait with nothing ready cannot happen (no age), and running alone fits.
    assert step(2, LoadSample(ready=0, running=12, oldest_age=None), 0).size == 2


def test_cooldown_spaces_out_changes() -> None:
    d = step(1, LoadSample(25, 0, 0.0), 0)
    assert d.size == 3
    busier = LoadSample(40, 0, 0.0)
    assert step(3, busier, 4.9, d.state).size == 3  # cooling down
    assert step(3, busier, 5.0, d.state).size == 4


def test_shrinking_needs_a_quiet_stretch_and_goes_one_at_a_time() -> None:
    state = ScaleState(last_change=0)
    d = step(3, IDLE, 100, state)
    assert d.size == 3 and d.state.low_since == 100
    d = step(3, IDLE, 159.9, d.state)
    assert d.size == 3
    d = step(3, IDLE, 160, d.state)
    assert d.size == 2 and "needed for 60.0s" in d.reason
    # The next one needs a whole quiet stretch of its own.
    d2 = step(2, IDLE, 161, d.state)
    assert d2.size == 2
    assert step(2, IDLE, 220.9, d2.state).size == 2
    assert step(2, IDLE, 221, d2.state).size == 1
    # Never below the minimum.
    assert step(1, IDLE, 10_000, ScaleState(low_since=0)).size == 1


def test_a_busy_sample_resets_the_quiet_stretch() -> None:
    d = step(3, IDLE, 0, ScaleState())
    d = step(3, LoadSample(30, 0, 1.0), 30, d.state)  # fits exactly: not quiet
    assert d.size == 3 and d.state.low_since is None
    d = step(3, IDLE, 31, d.state)
    assert step(3, IDLE, 90, d.state).size == 3
    assert step(3, IDLE, 91, d.state).size == 2


def test_the_band_between_growing_and_shrinking() -> None:
    # need == current: neither. A wait between half the target and the target: not quiet.
    assert step(2, LoadSample(15, 5, 1.0), 0).size == 2
    d = step(3, LoadSample(1, 0, 6.0), 0)
    assert d.size == 3 and d.state.low_since is None
    d = step(3, LoadSample(1, 0, 4.0), 0)
    assert d.state.low_since == 0


def test_jobs_per_worker_overrides_the_concurrency() -> None:
    policy = AutoscalePolicy(1, 10, jobs_per_worker=2)
    assert decide(policy, 1, LoadSample(7, 0, 0.0), 0, ScaleState(), concurrency=50).size == 4


def test_seed000_fields_round_trip_and_durations() -> None:
    policy = AutoscalePolicy.build(
        2, 8, target_wait="30s", jobs_per_worker=5, scale_down_after=timedelta(minutes=2)
    )
    assert policy.to_seed000() == {
        "minWorkers": 2,
        "maxWorkers": 8,
        "targetWaitMs": 30_000,
        "jobsPerWorker": 5,
        "scaleDownAfterMs": 120_000,
        "cooldownMs": 10_000,
        "intervalMs": 2_000,
    }
    assert AutoscalePolicy.from_seed000(policy.to_seed000()) == policy
    assert AutoscalePolicy.from_seed000({"maxWorkers": 3}) == AutoscalePolicy(max_workers=3)


def test_bad_bounds_and_values_are_refused() -> None:
    assert AutoscalePolicy.parse_bounds("1:8") == (1, 8)
    assert AutoscalePolicy.parse_bounds("0:3") == (0, 3)
    for text in ("8", "1-8", "a:b", ":3", "-1:2"):
        with pytest.raises(ValueError, match="MIN:MAX"):
            AutoscalePolicy.parse_bounds(text)
    with pytest.raises(ValueError, match="bounds"):
        AutoscalePolicy(5, 2)
    with pytest.raises(ValueError, match="bounds"):
        AutoscalePolicy(0, 0)
    with pytest.raises(ValueError, match="jobs_per_worker"):
        AutoscalePolicy(jobs_per_worker=0)
    with pytest.raises(ValueError, match="interval"):
        AutoscalePolicy(interval=0)


samples = st.builds(
    LoadSample,
    st.integers(0, 200),
    st.integers(0, 60),
    st.one_of(st.none(), st.floats(0, 100)),
)


@given(st.lists(st.tuples(samples, st.floats(0.5, 30)), min_size=1, max_size=60))
def test_any_load_keeps_the_bounds_and_the_cooldown(
    history: list[tuple[LoadSample, float]],
) -> None:
    size, state, now = 2, ScaleState(), 0.0
    changes: list[float] = []
    for sample, gap in history:
        now += gap
        d = decide(POLICY, size, sample, now, state, concurrency=10)
        assert POLICY.min_workers <= d.size <= POLICY.max_workers
        if d.size != size:
            changes.append(now)
            assert d.reason
            if d.size < size:
                assert d.size == size - 1  # shrinks one at a time
        size, state = d.size, d.state
    for a, b in itertools.pairwise(changes):
        assert b - a >= POLICY.cooldown
