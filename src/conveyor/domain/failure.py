"""What a failed attempt means: classify the exception, then decide retry or dead letter.

Pure: no I/O, no clock of its own. The worker's runner calls :func:`decide_failure` and only
stores and reports what it returns.

Classification reads three optional attributes an exception may carry to say how it is
recorded (the worker's internal exceptions set them): ``failure_code`` (a stable
:class:`~conveyor.errors.ErrorCode`), ``failure_type`` (the type name to record, e.g. the type
raised in a child process) and ``failure_traceback`` (a traceback to record instead of the
exception's own; ``""`` records none); ``failure_permanent = True`` forbids any retry.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Literal

from conveyor.domain.job import ErrorInfo
from conveyor.domain.retry import RetryPolicy
from conveyor.errors import ErrorCode, JobTimeout, Retry


@dataclass(frozen=True, slots=True)
class Classified:
    """How one exception is recorded."""

    code: str
    type_name: str
    message: str
    traceback: str
    #: Never retried, whatever the policy says (unknown task, undecodable payload).
    permanent: bool


@dataclass(frozen=True, slots=True)
class FailureDecision:
    """What to store and report for one failed attempt."""

    error: ErrorInfo
    #: Retry after ``retry_delay`` seconds; otherwise the job is dead-lettered.
    will_retry: bool
    retry_delay: float | None
    #: ``requested``: the handler raised :class:`~conveyor.errors.Retry` and attempts remain
    #: (counted as a retry, not as a failure); ``retried``: it failed and will be retried;
    #: ``dead``: it is dead-lettered.
    outcome: Literal["retried", "requested", "dead"]
    #: Whether a log line about this failure should carry the traceback (a job that dies
    #: of an ordinary exception), when nobody listens for failure events.
    log_traceback: bool


def classify(exc: BaseException) -> Classified:
    """The error code, type name, message and traceback recorded for ``exc``."""
    type_name = getattr(exc, "failure_type", None) or type(exc).__name__
    code = getattr(exc, "failure_code", None)
    if code is None:
        if isinstance(exc, Retry):
            code = ErrorCode.RETRY
        else:
            code = ErrorCode.TIMEOUT if isinstance(exc, JobTimeout) else ErrorCode.ERROR
    tb = getattr(exc, "failure_traceback", None)
    if tb is None:
        # A requested retry is the handler steering its job, not a crash: no traceback.
        tb = "" if isinstance(exc, Retry) else "".join(traceback.format_exception(exc))
    return Classified(
        code=str(code),
        type_name=type_name,
        message=str(exc) or type_name,
        traceback=tb,
        permanent=bool(getattr(exc, "failure_permanent", False)),
    )


def decide_failure(
    exc: BaseException,
    *,
    policy: RetryPolicy,
    attempt: int,
    max_attempts: int,
    task_known: bool,
    permanent: bool,
    now: float,
) -> FailureDecision:
    """Classify ``exc`` (raised by ``attempt`` of ``max_attempts``) and decide its fate.

    A retry happens only for a known task, a failure not marked permanent (by the caller or
    the exception) and an exception ``policy`` retries; its delay is the one a
    :class:`~conveyor.errors.Retry` asked for, else ``policy.delay_for(attempt)``.
    """
    facts = classify(exc)
    final = permanent or facts.permanent
    will_retry = task_known and not final and policy.should_retry(exc, attempt, max_attempts)
    delay: float | None = None
    if will_retry:
        requested = exc.delay if isinstance(exc, Retry) else None
        delay = requested if requested is not None else policy.delay_for(attempt)
    error = ErrorInfo(
        facts.code,
        facts.type_name,
        facts.message,
        facts.traceback or None,
        attempt=attempt,
        at=now,
    )
    return FailureDecision(
        error=error,
        will_retry=will_retry,
        retry_delay=delay,
        outcome=("requested" if isinstance(exc, Retry) else "retried") if will_retry else "dead",
        log_traceback=not will_retry
        and not facts.permanent
        and not isinstance(exc, Retry)
        and facts.traceback != "",
    )
