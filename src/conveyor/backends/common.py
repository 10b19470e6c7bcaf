"""Helpers shared by the backend packages: URL redaction, task-name patterns, filters in
Python, and the state sets some transitions act on."""

from __future__ import annotations

import re
from collections.abc import Sequence

from conveyor.domain.job import ErrorInfo, JobFilter, JobRecord
from conveyor.domain.states import JobState


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def pattern_to_regex(pattern: str) -> re.Pattern[str]:
    """A task-name pattern (``*`` matches any run of characters, all else literal) as a regex."""
    return re.compile("^" + ".*".join(re.escape(part) for part in pattern.split("*")) + "$", re.S)


def matches_any(name: str, patterns: Sequence[str] | None) -> bool:
    """Whether ``name`` matches one of ``patterns`` (``None`` matches everything)."""
    if patterns is None:
        return True
    return any(pattern_to_regex(p).match(name) is not None for p in patterns)


def filter_matches(record: JobRecord, flt: JobFilter) -> bool:
    """Whether one record satisfies a :class:`JobFilter` (used by the memory backend and by
    backends that filter in Python)."""
    if flt.states is not None and record.state not in flt.states:
        return False
    if flt.queue is not None and record.queue != flt.queue:
        return False
    if flt.task is not None and record.task != flt.task:
        return False
    if flt.error_code is not None and (record.error is None or record.error.code != flt.error_code):
        return False
    if flt.finished_before is not None and (
        record.finished_at is None or record.finished_at >= flt.finished_before
    ):
        return False
    if flt.workflow_id is not None and record.workflow_id != flt.workflow_id:
        return False
    return not (flt.ids is not None and record.id not in flt.ids)


RETRYABLE_STATES = (JobState.FAILED, JobState.CANCELLED, JobState.EXPIRED)
#: Stalls that make a job a suspect (see :meth:`Backend.claim`). The SQL and Lua claims spell
#: it out as ``stalls > 1``.
SUSPECT_STALLS = 2


# -- repeated fenced writes (see Backend.complete / fail / release) -------------------------


def fail_outcome(
    retry_delay: float | None, terminal: JobState
) -> tuple[JobState, frozenset[JobState]]:
    """The state a ``fail`` call writes, and the states a job it wrote can be found in later
    under the same fence (a retry scheduled for later may have been promoted to queued)."""
    if retry_delay is None:
        return JobState(terminal), frozenset({JobState(terminal)})
    if retry_delay <= 0:
        return JobState.QUEUED, frozenset({JobState.QUEUED})
    return JobState.SCHEDULED, frozenset({JobState.SCHEDULED, JobState.QUEUED})


def repeated_complete(record: JobRecord | None, fence: int) -> bool:
    """Whether a ``complete`` under ``fence`` already took effect: the job was completed
    under that fence (only its holder can complete it). A fence is at least 1 once a job was
    claimed; 0 (never issued) is never a repeat, here and below."""
    return (
        fence > 0
        and record is not None
        and record.fence == fence
        and record.state is JobState.COMPLETED
    )


def repeated_fail(
    record: JobRecord | None,
    fence: int,
    error: ErrorInfo,
    retry_delay: float | None,
    terminal: JobState,
) -> JobState | None:
    """The state a ``fail`` under ``fence`` wrote, when this very write already took effect
    (same fence, the same error stored last, the job in a state that write leads to);
    otherwise ``None``."""
    if fence <= 0 or record is None or record.fence != fence or record.error != error:
        return None
    wrote, seen = fail_outcome(retry_delay, terminal)
    return wrote if record.state in seen and record.lease_owner is None else None


def repeated_release(record: JobRecord | None, fence: int) -> bool:
    """Whether a ``release`` under ``fence`` already took effect: the job is queued under
    that fence and nobody holds it. (A job requeued under the same fence by stall recovery
    or by a retry-now failure looks the same: the answer is then also ``True``, the job
    being back in its queue, which is all a release promises.)"""
    return (
        fence > 0
        and record is not None
        and record.fence == fence
        and record.state is JobState.QUEUED
        and record.lease_owner is None
    )
