"""Helpers shared by the backend packages: URL redaction, task-name patterns, filters in
Python, and the state sets some transitions act on."""

from __future__ import annotations

import re
from collections.abc import Sequence

from conveyor.domain.job import JobFilter, JobRecord
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
