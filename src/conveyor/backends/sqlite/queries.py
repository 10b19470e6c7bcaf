"""SQL for the SQLite backend: named queries from ``sqlite/sql/queries.sql``, the JobFilter
``WHERE`` builder, and conversions between rows and domain values.

Statements live in the ``.sql`` file; only filters (whose shape depends on which fields of a
:class:`~conveyor.domain.job.JobFilter` are set) are composed here, always with ``?``
parameters, never with values spliced into the text.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

from conveyor.domain.job import ErrorInfo, JobFilter, JobRecord, LogEntry, NewJob, WorkerInfo
from conveyor.domain.states import JobState
from conveyor.errors import SerializationError

SQL_DIR = resources.files("conveyor.backends.sqlite").joinpath("sql")

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.M)


def _load_queries() -> dict[str, str]:
    text = SQL_DIR.joinpath("queries.sql").read_text(encoding="utf-8")
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        queries[name] = body.strip().rstrip(";")
    return queries


#: Every named query of ``queries.sql``.
Q: dict[str, str] = _load_queries()

#: The columns of ``conveyor_jobs`` in the order :func:`row_to_record` reads them.
JOB_COLUMNS = (
    "id, task, queue, state, payload, priority, run_at, attempts, max_attempts, created_at, "
    "fence, lease_owner, lease_until, timeout, expires_at, idempotency_key, concurrency_key, "
    "result, error, errors, progress, logs, trace_id, metadata, workflow_id, parents, "
    "started_at, finished_at, payload_version, stalls, cancel_requested, cancel_reason, "
    "dead_letter_queue"
)


def dumps(value: Any) -> str:
    """Compact JSON text (ASCII only, so one value never contains a line break)."""
    return json.dumps(value, separators=(",", ":"))


def encode_job(job: NewJob) -> tuple[str, str]:
    """A job's metadata and parents as JSON text (done by the caller, before any lock)."""
    try:
        metadata = dumps(job.metadata) if job.metadata else "{}"
    except (TypeError, ValueError) as exc:
        raise SerializationError(
            f"job {job.id} ({job.task}): metadata must be JSON-serializable: {exc}"
        ) from exc
    return metadata, (dumps(list(job.parents)) if job.parents else "[]")


def error_line(error: ErrorInfo) -> str:
    """One error as a line of the newline-delimited ``errors`` column."""
    return dumps(error.to_dict()) + "\n"


def log_lines(entries: list[LogEntry]) -> str:
    """Log entries as lines of the newline-delimited ``logs`` column."""
    return "".join(dumps(entry.to_dict()) + "\n" for entry in entries)


def _ndjson(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.split("\n") if line]


def glob_pattern(pattern: str) -> str:
    """A task pattern (``*`` = any run of characters, all else literal) as a SQLite GLOB."""
    out = []
    for ch in pattern:
        if ch in "?[":
            out.append(f"[{ch}]")
        else:
            out.append(ch)
    return "".join(out)


def filter_where(flt: JobFilter) -> tuple[str, list[Any]]:
    """A ``WHERE`` clause (without the keyword) and its parameters for a :class:`JobFilter`."""
    clauses: list[str] = []
    params: list[Any] = []
    if flt.states is not None:
        clauses.append("state IN (SELECT value FROM json_each(?))")
        params.append(dumps([str(s) for s in flt.states]))
    if flt.queue is not None:
        clauses.append("queue = ?")
        params.append(flt.queue)
    if flt.task is not None:
        clauses.append("task = ?")
        params.append(flt.task)
    if flt.error_code is not None:
        clauses.append("error_code = ?")
        params.append(flt.error_code)
    if flt.finished_before is not None:
        clauses.append("finished_at IS NOT NULL AND finished_at < ?")
        params.append(flt.finished_before)
    if flt.workflow_id is not None:
        clauses.append("workflow_id = ?")
        params.append(flt.workflow_id)
    if flt.ids is not None:
        clauses.append("id IN (SELECT value FROM json_each(?))")
        params.append(dumps(list(flt.ids)))
    return (" AND ".join(clauses) or "1"), params


def row_to_record(row: tuple[Any, ...]) -> JobRecord:
    """A ``SELECT JOB_COLUMNS`` row as a :class:`JobRecord`."""
    (
        id_,
        task,
        queue,
        state,
        payload,
        priority,
        run_at,
        attempts,
        max_attempts,
        created_at,
        fence,
        lease_owner,
        lease_until,
        timeout,
        expires_at,
        idempotency_key,
        concurrency_key,
        result,
        error,
        errors,
        progress,
        logs,
        trace_id,
        metadata,
        workflow_id,
        parents,
        started_at,
        finished_at,
        payload_version,
        stalls,
        cancel_requested,
        cancel_reason,
        dead_letter_queue,
    ) = row
    return JobRecord(
        id=id_,
        task=task,
        queue=queue,
        state=JobState(state),
        payload=bytes(payload),
        priority=priority,
        run_at=run_at,
        attempts=attempts,
        max_attempts=max_attempts,
        created_at=created_at,
        fence=fence,
        lease_owner=lease_owner,
        lease_until=lease_until,
        timeout=timeout,
        expires_at=expires_at,
        idempotency_key=idempotency_key,
        concurrency_key=concurrency_key,
        result=None if result is None else bytes(result),
        error=None if error is None else ErrorInfo.from_dict(json.loads(error)),
        errors=tuple(ErrorInfo.from_dict(d) for d in _ndjson(errors)),
        progress=None if progress is None else bytes(progress),
        logs=tuple(LogEntry.from_dict(d) for d in _ndjson(logs)),
        trace_id=trace_id,
        metadata=json.loads(metadata),
        workflow_id=workflow_id,
        parents=tuple(json.loads(parents)),
        started_at=started_at,
        finished_at=finished_at,
        payload_version=payload_version,
        stalls=stalls,
        cancel_requested=bool(cancel_requested),
        cancel_reason=cancel_reason,
        dead_letter_queue=dead_letter_queue,
    )


def worker_row(info: WorkerInfo) -> tuple[Any, ...]:
    """Parameters of ``register_worker`` for one :class:`WorkerInfo`."""
    return (
        info.id,
        info.host,
        info.pid,
        info.started_at,
        info.heartbeat_at,
        dumps(list(info.queues)),
        info.concurrency,
        dumps(info.stats),
    )


def row_to_worker(row: tuple[Any, ...]) -> WorkerInfo:
    """A ``list_workers`` row as a :class:`WorkerInfo`."""
    id_, host, pid, started_at, heartbeat_at, queues, concurrency, stats = row
    return WorkerInfo(
        id=id_,
        host=host,
        pid=pid,
        started_at=started_at,
        heartbeat_at=heartbeat_at,
        queues=tuple(json.loads(queues)),
        concurrency=concurrency,
        stats=json.loads(stats),
    )
