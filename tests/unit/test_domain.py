"""Pure rules: durations, priorities, retry math, ids, states."""

from __future__ import annotations

import random
import time
from datetime import timedelta

import pytest

from conveyor.domain.durations import parse_duration
from conveyor.domain.ids import id_time, new_job_id
from conveyor.domain.priority import PRIORITY_ALIASES, parse_priority, priority_name
from conveyor.domain.retry import RetryPolicy
from conveyor.domain.states import TRANSITIONS, JobState, can_transition
from conveyor.errors import JobTimeout, Retry


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("2h", 7200), ("1d", 86400), ("250ms", 0.25), ("1h30m", 5400),
     ("1.5", 1.5), (7, 7), (timedelta(minutes=2), 120)],
)
def test_durations_parse(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["-1s", "ten", "5x", "", -3, float("nan"), float("inf"), True])
def test_bad_durations_name_the_field(bad: object) -> None:
    with pytest.raises(ValueError, match="delay"):
        parse_duration(bad, field="delay")  # type: ignore[arg-type]


def test_priority_aliases_are_ordered_higher_first() -> None:
    order = ["critical", "high", "normal", "low", "background"]
    values = [parse_priority(name) for name in order]
    assert values == sorted(values, reverse=True)
    assert parse_priority("normal") == 0
    assert all(priority_name(v) == k for k, v in PRIORITY_ALIASES.items())


@pytest.mark.parametrize("bad", ["urgent", 1.5, None, True, 2**20])
def test_bad_priority(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_priority(bad)  # type: ignore[arg-type]


def test_backoff_formulas_without_jitter() -> None:
    exp = RetryPolicy.build(6, delay=1, jitter=False, max_delay=10)
    assert [exp.delay_for(n) for n in range(1, 6)] == [1, 2, 4, 8, 10]
    lin = RetryPolicy.build(4, backoff="linear", delay=2, jitter=False)
    assert [lin.delay_for(n) for n in (1, 2, 3)] == [2, 4, 6]
    fixed = RetryPolicy.build(4, backoff="fixed", delay="3s", jitter=False)
    assert [fixed.delay_for(n) for n in (1, 2, 3)] == [3, 3, 3]
    custom = RetryPolicy.build(4, backoff=lambda n: n * 10, jitter=False, max_delay=25)
    assert [custom.delay_for(n) for n in (1, 2, 3)] == [10, 20, 25]
    mult = RetryPolicy.build(4, delay=1, multiplier=3, jitter=False)
    assert [mult.delay_for(n) for n in (1, 2, 3)] == [1, 3, 9]


def test_jitter_stays_within_a_quarter() -> None:
    policy = RetryPolicy.build(3, backoff="fixed", delay=1)
    rng = random.Random(7)
    samples = [policy.delay_for(1, rng) for _ in range(500)]
    assert min(samples) >= 0.75 and max(samples) <= 1.25
    assert max(samples) - min(samples) > 0.3  # it really jitters


def test_retry_decision_tree() -> None:
    policy = RetryPolicy.build(3, retry_on=[ConnectionError], no_retry_on=[])
    assert policy.should_retry(ConnectionError(), 1, 3)
    assert not policy.should_retry(ValueError(), 1, 3)
    assert not policy.should_retry(ConnectionError(), 3, 3)  # attempts exhausted
    assert policy.should_retry(Retry(), 1, 3)  # explicit retry bypasses filters
    assert not policy.should_retry(JobTimeout(), 1, 3)  # timeouts opt in
    opted = RetryPolicy.build(3, retry_on=[JobTimeout])
    assert opted.should_retry(JobTimeout(), 1, 3)
    deny = RetryPolicy.build(3, no_retry_on=[KeyError])
    assert not deny.should_retry(KeyError(), 1, 3) and deny.should_retry(OSError(), 1, 3)


def test_retry_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="total runs"):
        RetryPolicy.build(0)
    with pytest.raises(ValueError, match="backoff"):
        RetryPolicy(attempts=2, backoff="cubic")  # type: ignore[arg-type]


def test_ids_sort_by_creation_and_are_unique() -> None:
    ids = [new_job_id() for _ in range(5000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 for i in ids)
    assert abs(id_time(ids[0]) - id_time(ids[-1])) < 5


def test_terminal_states_only_leave_by_retry() -> None:
    for state in JobState:
        if state.is_terminal:
            assert TRANSITIONS[state] <= {JobState.QUEUED}
    assert can_transition(JobState.RUNNING, JobState.SCHEDULED)
    assert not can_transition(JobState.COMPLETED, JobState.QUEUED)


def test_ids_are_rfc9562_uuid7() -> None:
    import uuid

    before = time.time()
    ids = [new_job_id() for _ in range(3000)]
    for job_id in ids[:50] + ids[-50:]:
        parsed = uuid.UUID(job_id)
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert parsed.hex == job_id
    assert abs(id_time(ids[0]) - before) < 5
    # the 48-bit prefix is the Unix time in milliseconds, as RFC 9562 lays it out
    assert int(uuid.UUID(ids[0]).int >> 80) == int(id_time(ids[0]) * 1000)


def test_ids_of_the_earlier_layout_still_read_and_sort() -> None:
    # 48-bit ms, then a 12-bit counter, a '7' and random bits (what stores hold from before)
    old = "018c7a4b1c00" + "001" + "7" + "0123456789abcdef"
    assert id_time(old) == int("018c7a4b1c00", 16) / 1000
    assert sorted([new_job_id(), old])[0] == old  # older time sorts first


def test_schedule_job_ids_are_uuid7_and_deterministic() -> None:
    import uuid

    from conveyor.scheduler.spec import build_spec

    spec = build_spec("nightly", "tasks.x", cron="0 3 * * *")
    first, again = spec.job_id(1_700_000_000.0), spec.job_id(1_700_000_000.0)
    assert first == again and first != spec.job_id(1_700_000_060.0)
    parsed = uuid.UUID(first)
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert id_time(first) == 1_700_000_000.0
