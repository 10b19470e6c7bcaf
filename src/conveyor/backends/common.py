"""Helpers shared by the backend packages: URL redaction, task-name patterns, filters in
Python, and the state sets some transitions act on."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from conveyor.domain.job import ErrorInfo, JobFilter, JobRecord, LogEntry
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


# -- reading stored records that may be damaged ---------------------------------------------


class FieldReader:
    """Decodes the stored fields of one record, tolerating damage (a corrupt or hand-edited
    row, hash field or payload key): a field that cannot be read gets a default, and
    :attr:`damage` says which field held what. Reads never raise because of one bad record;
    operator commands show what they can and mark the record (see ``JobRecord.damage``).

    Values come as the store holds them: Python values from SQL drivers, text or bytes from
    Redis; numbers written as text are accepted.
    """

    def __init__(self) -> None:
        self.damage: list[str] = []

    def bad(self, name: str, value: Any, why: str = "") -> None:
        shown = repr(value)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        self.damage.append(f"{name}: {why or 'unreadable'} ({shown})")

    @staticmethod
    def _str(value: Any) -> str:
        if isinstance(value, bytes | bytearray | memoryview):
            return bytes(value).decode("utf-8")
        if isinstance(value, str):
            return value
        raise TypeError(type(value).__name__)

    def text(self, name: str, value: Any, default: str = "") -> str:
        try:
            return self._str(value)
        except (TypeError, UnicodeDecodeError):
            self.bad(name, value, "not text" if value is not None else "missing")
            return default

    def opt_text(self, name: str, value: Any) -> str | None:
        if value is None:
            return None
        try:
            return self._str(value)
        except (TypeError, UnicodeDecodeError):
            self.bad(name, value, "not text")
            return None

    def integer(self, name: str, value: Any, default: int) -> int:
        if value is None:
            return default
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        try:
            if isinstance(value, bytes | str):
                return int(value)
        except ValueError:
            pass
        self.bad(name, value, "not an integer")
        return default

    def number(self, name: str, value: Any, default: float = 0.0) -> float:
        found = self.opt_number(name, value)
        if found is None:
            if value is None:
                self.bad(name, value, "missing")
            return default
        return found

    def opt_number(self, name: str, value: Any) -> float | None:
        if value is None:
            return None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        try:
            if isinstance(value, bytes | str):
                return float(value)
            if hasattr(value, "__float__"):  # Decimal and the like
                return float(value)
        except ValueError:
            pass
        self.bad(name, value, "not a number")
        return None

    def blob(self, name: str, value: Any) -> bytes:
        found = self.opt_blob(name, value)
        if found is None:
            self.bad(name, value, "missing")
            return b""
        return found

    def opt_blob(self, name: str, value: Any) -> bytes | None:
        if value is None:
            return None
        if isinstance(value, bytes | bytearray | memoryview):
            return bytes(value)
        if isinstance(value, str):
            return value.encode("utf-8", "surrogatepass")
        self.bad(name, value, "not bytes")
        return None

    def state(self, value: Any) -> JobState:
        try:
            state = JobState(self._str(value))
        except (TypeError, ValueError):
            self.bad("state", value, "not a job state")
            return JobState.UNKNOWN
        if state is JobState.UNKNOWN:  # never stored by a transition
            self.bad("state", value, "not a job state")
        return state

    def _json(self, value: Any) -> Any:
        if isinstance(value, bytes | bytearray | memoryview | str):
            return json.loads(self._str(value))
        return value  # decoded already (jsonb)

    def error(self, name: str, value: Any) -> ErrorInfo | None:
        if value is None:
            return None
        try:
            data = self._json(value)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            return ErrorInfo.from_dict(data)
        except (TypeError, ValueError, UnicodeDecodeError) as exc:
            self.bad(name, value, _why(exc))
            return None

    def error_list(self, name: str, value: Any) -> tuple[ErrorInfo, ...]:
        items = self._items(name, value)
        out = []
        for i, item in enumerate(items):
            try:
                if not isinstance(item, dict):
                    raise ValueError("not a JSON object")
                out.append(ErrorInfo.from_dict(item))
            except (TypeError, ValueError) as exc:
                self.bad(f"{name}[{i}]", item, _why(exc))
        return tuple(out)

    def log_list(self, name: str, value: Any) -> tuple[LogEntry, ...]:
        out = []
        for i, item in enumerate(self._items(name, value)):
            try:
                if not isinstance(item, dict):
                    raise ValueError("not a JSON object")
                out.append(LogEntry.from_dict(item))
            except (TypeError, ValueError) as exc:
                self.bad(f"{name}[{i}]", item, _why(exc))
        return tuple(out)

    def _items(self, name: str, value: Any) -> list[Any]:
        """A JSON array (text or decoded), or newline-delimited JSON text (SQLite)."""
        if value is None or value in ("", b""):
            return []
        if isinstance(value, list | tuple):
            return list(value)
        try:
            text = self._str(value) if not isinstance(value, dict | int | float) else None
        except (TypeError, UnicodeDecodeError):
            text = None
        if text is None:
            self.bad(name, value, "not a JSON array")
            return []
        stripped = text.strip()
        if stripped.startswith("["):
            try:
                data = json.loads(stripped)
            except ValueError as exc:
                self.bad(name, value, _why(exc))
                return []
            if isinstance(data, list):
                return data
            self.bad(name, value, "not a JSON array")
            return []
        out: list[Any] = []
        for number, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                self.bad(name, line, f"line {number} is not JSON")
        return out

    def mapping(self, name: str, value: Any) -> dict[str, Any]:
        if value is None or value in ("", b""):
            return {}
        try:
            data = self._json(value)
        except (TypeError, ValueError, UnicodeDecodeError) as exc:
            self.bad(name, value, _why(exc))
            return {}
        if not isinstance(data, dict):
            self.bad(name, value, "not a JSON object")
            return {}
        return data

    def strings(self, name: str, value: Any) -> tuple[str, ...]:
        if value is None or value in ("", b""):
            return ()
        try:
            data = self._json(value)
        except (TypeError, ValueError, UnicodeDecodeError) as exc:
            self.bad(name, value, _why(exc))
            return ()
        if not isinstance(data, list | tuple) or not all(isinstance(x, str) for x in data):
            self.bad(name, value, "not a list of strings")
            return ()
        return tuple(data)


def _why(exc: BaseException) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return "not JSON"
    return str(exc) or type(exc).__name__


def strip_to_summary(record: JobRecord) -> JobRecord:
    """``record`` as :meth:`~conveyor.backends.base.Backend.list_summaries` returns it."""
    error = record.error
    return replace(
        record,
        payload=b"",
        result=None,
        progress=None,
        logs=(),
        errors=(),
        error=None if error is None else replace(error, traceback=None),
        summary=True,
    )
