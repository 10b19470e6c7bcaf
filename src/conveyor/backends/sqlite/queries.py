"""SQL for the SQLite backend: named queries from ``sqlite/sql/queries.sql``, the JobFilter
``WHERE`` builder, and conversions between rows and domain values.

Statements live in the ``.sql`` file; only filters (whose shape depends on which fields of a
:class:`~conveyor.domain.job.JobFilter` are set) are composed here, always with ``?``
parameters, never with values spliced into the text.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from importlib import resources
from typing import Any

from conveyor.backends.common import FieldReader
from conveyor.domain.job import ErrorInfo, JobFilter, JobRecord, LogEntry, NewJob, WorkerInfo
from conveyor.domain.states import STORED_STATES, JobState
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


#: :data:`JOB_COLUMNS` for listings: the payload, result, progress, logs and error history are
#: left out (a listing must not load a 10 MB argument per row), the last error's traceback too.
SUMMARY_COLUMNS = JOB_COLUMNS.replace("payload, priority", "NULL, priority").replace(
    "result, error, errors, progress, logs,",
    "NULL, CASE WHEN json_valid(error) "
    "THEN json_remove(error, '$.traceback') ELSE error END, '', NULL, '',",
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
        known = [str(s) for s in flt.states if s is not JobState.UNKNOWN]
        if JobState.UNKNOWN in flt.states:  # records whose stored state is not a state
            clauses.append(
                "(state IN (SELECT value FROM json_each(?)) "
                "OR state NOT IN (SELECT value FROM json_each(?)))"
            )
            params += [dumps(known), dumps([str(s) for s in STORED_STATES])]
        else:
            clauses.append("state IN (SELECT value FROM json_each(?))")
            params.append(dumps(known))
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


def row_to_record(row: tuple[Any, ...], *, summary: bool = False) -> JobRecord:
    """A ``SELECT JOB_COLUMNS`` (or :data:`SUMMARY_COLUMNS`) row as a :class:`JobRecord`.

    Never raises for a damaged row: unreadable fields get defaults and are named in
    ``damage`` (a corrupt or hand-edited record must not take an operator command down).
    """
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
    r = FieldReader()
    record = JobRecord(
        id=r.text("id", id_),
        task=r.text("task", task),
        queue=r.text("queue", queue),
        state=r.state(state),
        payload=b"" if summary else r.blob("payload", payload),
        priority=r.integer("priority", priority, 0),
        run_at=r.number("run_at", run_at),
        attempts=r.integer("attempts", attempts, 0),
        max_attempts=r.integer("max_attempts", max_attempts, 1),
        created_at=r.number("created_at", created_at),
        fence=r.integer("fence", fence, 0),
        lease_owner=r.opt_text("lease_owner", lease_owner),
        lease_until=r.opt_number("lease_until", lease_until),
        timeout=r.opt_number("timeout", timeout),
        expires_at=r.opt_number("expires_at", expires_at),
        idempotency_key=r.opt_text("idempotency_key", idempotency_key),
        concurrency_key=r.opt_text("concurrency_key", concurrency_key),
        result=None if summary else r.opt_blob("result", result),
        error=r.error("error", error),
        errors=() if summary else r.error_list("errors", errors),
        progress=None if summary else r.opt_blob("progress", progress),
        logs=() if summary else r.log_list("logs", logs),
        trace_id=r.opt_text("trace_id", trace_id),
        metadata=r.mapping("metadata", metadata),
        workflow_id=r.opt_text("workflow_id", workflow_id),
        parents=r.strings("parents", parents),
        started_at=r.opt_number("started_at", started_at),
        finished_at=r.opt_number("finished_at", finished_at),
        payload_version=r.integer("payload_version", payload_version, 1),
        stalls=r.integer("stalls", stalls, 0),
        cancel_requested=bool(r.integer("cancel_requested", cancel_requested, 0)),
        cancel_reason=r.opt_text("cancel_reason", cancel_reason),
        dead_letter_queue=r.opt_text("dead_letter_queue", dead_letter_queue),
        summary=summary,
    )
    return replace(record, damage=tuple(r.damage)) if r.damage else record


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
    """A ``list_workers`` row as a :class:`WorkerInfo` (damaged fields named in
    ``stats["damage"]``, never raised)."""
    id_, host, pid, started_at, heartbeat_at, queues, concurrency, stats = row
    r = FieldReader()
    info = WorkerInfo(
        id=r.text("id", id_),
        host=r.text("host", host),
        pid=r.integer("pid", pid, 0),
        started_at=r.number("started_at", started_at),
        heartbeat_at=r.number("heartbeat_at", heartbeat_at),
        queues=r.strings("queues", queues),
        concurrency=r.integer("concurrency", concurrency, 0),
        stats=r.mapping("stats", stats),
    )
    if r.damage:
        info.stats["damage"] = list(r.damage)
    return info
