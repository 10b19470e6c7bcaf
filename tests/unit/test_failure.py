"""The failure decision (``conveyor.domain.failure``), without a worker: classification of
exceptions, retry or dead letter, the delay, and what is logged with a traceback."""

from __future__ import annotations

import random

import pytest

from conveyor.domain.failure import FailureDecision, classify, decide_failure
from conveyor.domain.retry import RetryPolicy
from conveyor.errors import ErrorCode, JobTimeout, Retry

POLICY = RetryPolicy.build(attempts=3, backoff="exponential", delay=2, jitter=False)


def _decide(
    exc: BaseException,
    *,
    policy: RetryPolicy = POLICY,
    attempt: int = 1,
    max_attempts: int = 3,
    task_known: bool = True,
    permanent: bool = False,
) -> FailureDecision:
    return decide_failure(
        exc,
        policy=policy,
        attempt=attempt,
        max_attempts=max_attempts,
        task_known=task_known,
        permanent=permanent,
        now=100.0,
    )


class Internal(Exception):
    """Like the worker's own exceptions: says how it is recorded."""

    failure_code = "invalid_payload"
    failure_type = "InvalidPayload"
    failure_traceback = ""
    failure_permanent = True


def test_an_ordinary_exception_is_an_error_with_its_traceback() -> None:
    try:
        raise ValueError("bad value")
    except ValueError as exc:
        facts = classify(exc)
    assert (facts.code, facts.type_name, facts.message) == ("error", "ValueError", "bad value")
    assert "raise ValueError" in facts.traceback
    assert not facts.permanent


def test_message_falls_back_to_the_type_name() -> None:
    assert classify(KeyError()).message == "KeyError"


def test_timeouts_get_their_code() -> None:
    assert classify(JobTimeout("slow")).code == ErrorCode.TIMEOUT


def test_exceptions_describe_themselves() -> None:
    facts = classify(Internal("undecodable"))
    assert (facts.code, facts.type_name, facts.traceback, facts.permanent) == (
        "invalid_payload",
        "InvalidPayload",
        "",
        True,
    )


@pytest.mark.parametrize(
    ("attempt", "delay"),
    [(1, 2.0), (2, 4.0)],
)
def test_retries_follow_the_policy_delay_for_the_failed_attempt(attempt: int, delay: float) -> None:
    d = _decide(RuntimeError("x"), attempt=attempt)
    assert d.will_retry and d.outcome == "retried"
    assert d.retry_delay == delay
    assert d.error.attempt == attempt and d.error.at == 100.0
    assert not d.log_traceback


def test_the_last_attempt_dead_letters_with_a_traceback_to_log() -> None:
    d = _decide(RuntimeError("x"), attempt=3)
    assert not d.will_retry and d.outcome == "dead" and d.retry_delay is None
    assert d.log_traceback


def test_a_requested_retry_uses_its_own_delay_and_is_never_logged_with_a_traceback() -> None:
    d = _decide(Retry(delay=7.5))
    assert d.will_retry and d.retry_delay == 7.5
    last = _decide(Retry(delay=7.5), attempt=3)
    assert not last.will_retry and not last.log_traceback


def test_a_requested_retry_without_delay_uses_the_policy() -> None:
    assert _decide(Retry(), attempt=2).retry_delay == 4.0


@pytest.mark.parametrize(
    "kw",
    [{"task_known": False}, {"permanent": True}],
)
def test_unknown_tasks_and_permanent_failures_never_retry(kw: dict[str, bool]) -> None:
    d = _decide(RuntimeError("x"), **kw)
    assert not d.will_retry and d.outcome == "dead"


def test_self_described_permanent_failures_never_retry_and_log_no_traceback() -> None:
    d = _decide(Internal("x"))
    assert not d.will_retry and not d.log_traceback
    assert d.error.traceback is None and d.error.code == "invalid_payload"


def test_timeouts_are_not_retried_unless_the_policy_opts_in() -> None:
    assert not _decide(JobTimeout("slow")).will_retry
    opted = RetryPolicy.build(attempts=3, delay=1, jitter=False, retry_on=[JobTimeout])
    assert _decide(JobTimeout("slow"), policy=opted).will_retry


def test_no_retry_on_filters() -> None:
    policy = RetryPolicy.build(attempts=5, delay=1, no_retry_on=[KeyError])
    assert not _decide(KeyError("k"), policy=policy).will_retry
    assert _decide(ValueError("v"), policy=policy).will_retry


@pytest.mark.parametrize(
    ("backoff", "attempt", "expected"),
    [("linear", 3, 6.0), ("fixed", 4, 2.0), ("exponential", 4, 16.0)],
)
def test_backoff_shapes(backoff: str, attempt: int, expected: float) -> None:
    policy = RetryPolicy.build(attempts=9, backoff=backoff, delay=2, jitter=False)  # type: ignore[arg-type]
    assert (
        _decide(RuntimeError(), policy=policy, attempt=attempt, max_attempts=9).retry_delay
        == expected
    )


def test_jittered_delays_stay_within_a_quarter_of_the_base() -> None:
    policy = RetryPolicy.build(attempts=9, delay=4, backoff="fixed", jitter=True)
    random.seed(7)
    delays = {
        _decide(RuntimeError(), policy=policy, max_attempts=9).retry_delay for _ in range(200)
    }
    assert min(delays) >= 3.0 and max(delays) <= 5.0 and len(delays) > 1
