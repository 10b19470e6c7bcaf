"""SQL text and row codecs for the PostgreSQL backend.

The statements live in ``postgres/sql/queries.sql`` (one ``-- name:`` section each); this
module renders them for one schema and converts between rows and the domain values of
:mod:`conveyor.domain.job`. It needs no database connection and does no I/O beyond reading
the package data once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import replace
from functools import lru_cache
from importlib import resources
from typing import Any

from conveyor.backends.common import FieldReader
from conveyor.domain.job import ClaimedJob, ErrorInfo, JobFilter, JobRecord
from conveyor.domain.states import KEY_HOLDING_STATES, STORED_STATES, JobState

#: ``now`` is the caller's clock when given, else the server's; statement_timestamp() is the
#: server clock frozen for the duration of one statement, so every use in it agrees.
NOW_SQL = "coalesce(%(now)s::float8, extract(epoch FROM statement_timestamp())::float8)"

HOLDING_SQL = ", ".join(f"'{s.value}'" for s in sorted(KEY_HOLDING_STATES))

#: The columns of a full :class:`JobRecord`, in the order :func:`record_from_row` reads them.
JOB_COLUMNS = (
    "j.id, j.task, j.queue, j.state, j.payload, j.priority, j.run_at, j.attempts, "
    "j.max_attempts, j.created_at, j.fence, j.lease_owner, j.lease_until, j.timeout, "
    "j.expires_at, j.idempotency_key, j.concurrency_key, j.result, j.error, j.errors, "
    "j.progress, "
    "(SELECT coalesce(json_agg(l.entry ORDER BY l.seq), '[]'::json) "
    "FROM {schema}.job_logs l WHERE l.job_id = j.id), "
    "j.trace_id, j.metadata, j.workflow_id, j.parents, j.started_at, j.finished_at, "
    "j.payload_version, j.stalls, j.cancel_requested, j.cancel_reason, j.dead_letter_queue"
)

#: :data:`JOB_COLUMNS` for listings: the payload, result, progress, logs and error history are
#: left in the store (a listing must not load a 10 MB argument per row), the traceback too.
SUMMARY_COLUMNS = (
    "j.id, j.task, j.queue, j.state, NULL::bytea, j.priority, j.run_at, j.attempts, "
    "j.max_attempts, j.created_at, j.fence, j.lease_owner, j.lease_until, j.timeout, "
    "j.expires_at, j.idempotency_key, j.concurrency_key, NULL::bytea, "
    "CASE WHEN jsonb_typeof(j.error) = 'object' THEN j.error - 'traceback' ELSE j.error END, "
    "NULL::jsonb, NULL::bytea, NULL::json, "
    "j.trace_id, j.metadata, j.workflow_id, j.parents, j.started_at, j.finished_at, "
    "j.payload_version, j.stalls, j.cancel_requested, j.cancel_reason, j.dead_letter_queue"
)

SQL_DIR = "sql"


def read_sql(name: str) -> str:
    """The text of one file under ``backends/postgres/sql``."""
    return (
        resources.files("conveyor.backends.postgres")
        .joinpath(f"{SQL_DIR}/{name}")
        .read_text("utf-8")
    )


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier (any characters; embedded quotes doubled)."""
    if not name or "\x00" in name:
        raise ValueError(f"invalid SQL identifier {name!r}")
    if len(name.encode()) > 63:
        raise ValueError(f"SQL identifier {name!r} is longer than 63 bytes")
    return '"' + name.replace('"', '""') + '"'


def render(text: str, schema: str) -> str:
    """Fill the ``{schema}``, ``{now}``, ``{holding}`` and ``{job_columns}`` placeholders."""
    return (
        text.replace("{job_columns}", JOB_COLUMNS)
        .replace("{summary_columns}", SUMMARY_COLUMNS)
        .replace("{schema}", quote_ident(schema))
        .replace("{now}", NOW_SQL)
        .replace("{holding}", HOLDING_SQL)
    )


def _parse_sections(text: str) -> dict[str, str]:
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("-- name: "):
            current = sections.setdefault(line[len("-- name: ") :].strip(), [])
            continue
        if current is not None and not line.lstrip().startswith("--"):
            current.append(line)
    return {name: "\n".join(lines).strip() + "\n" for name, lines in sections.items()}


@lru_cache(maxsize=64)
def queries(schema: str) -> dict[str, str]:
    """Every named statement of ``queries.sql`` rendered for ``schema``."""
    return {
        name: render(sql, schema) for name, sql in _parse_sections(read_sql("queries.sql")).items()
    }


def channels(schema: str) -> tuple[str, str]:
    """The LISTEN/NOTIFY channels of a schema: (jobs became claimable, a job finished).

    Channel names are identifiers (at most 63 bytes); a long schema name is hashed.
    """
    base = schema if len(schema.encode()) <= 40 else hashlib.sha1(schema.encode()).hexdigest()[:20]
    return f"conveyor:{base}:jobs", f"conveyor:{base}:done"


def like_patterns(patterns: Sequence[str] | None) -> list[str] | None:
    """Task-name patterns (``*`` wildcards, everything else literal) as LIKE patterns."""
    if patterns is None:
        return None
    out = []
    for pattern in patterns:
        escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        out.append(escaped.replace("*", "%"))
    return out


def filter_sql(flt: JobFilter) -> tuple[str, dict[str, Any]]:
    """A :class:`JobFilter` as a predicate over alias ``j`` plus its parameters."""
    parts: list[str] = ["true"]
    params: dict[str, Any] = {}
    if flt.states is not None:
        params["f_states"] = [JobState(s).value for s in flt.states]
        if JobState.UNKNOWN in flt.states:  # records whose stored state is not a state
            parts.append(
                "(j.state = ANY (%(f_states)s::text[]) OR j.state <> ALL (%(f_stored)s::text[]))"
            )
            params["f_stored"] = [s.value for s in STORED_STATES]
        else:
            parts.append("j.state = ANY (%(f_states)s::text[])")
    if flt.queue is not None:
        parts.append("j.queue = %(f_queue)s::text")
        params["f_queue"] = flt.queue
    if flt.task is not None:
        parts.append("j.task = %(f_task)s::text")
        params["f_task"] = flt.task
    if flt.error_code is not None:
        parts.append("j.error ->> 'code' = %(f_error_code)s::text")
        params["f_error_code"] = flt.error_code
    if flt.finished_before is not None:
        parts.append("j.finished_at < %(f_finished_before)s::float8")
        params["f_finished_before"] = float(flt.finished_before)
    if flt.workflow_id is not None:
        parts.append("j.workflow_id = %(f_workflow_id)s::text")
        params["f_workflow_id"] = flt.workflow_id
    if flt.ids is not None:
        parts.append("j.id = ANY (%(f_ids)s::text[])")
        params["f_ids"] = list(flt.ids)
    return " AND ".join(parts), params


# -- JSON -----------------------------------------------------------------------------------
def _strip_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_strip_nul(k): _strip_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strip_nul(v) for v in value]
    return value


def dumps(value: Any) -> str:
    """JSON text PostgreSQL's jsonb accepts (it cannot store U+0000; that becomes U+FFFD)."""
    text = json.dumps(value, separators=(",", ":"))
    if "\\u0000" in text:
        text = json.dumps(_strip_nul(value), separators=(",", ":"))
    return text


def error_json(error: ErrorInfo) -> str:
    """An :class:`ErrorInfo` as JSON text for a jsonb parameter."""
    return dumps(error.to_dict())


def stored_error(text: str) -> ErrorInfo:
    """The :class:`ErrorInfo` that reading back :func:`error_json` ``text`` gives."""
    return ErrorInfo.from_dict(json.loads(text))


# -- rows -----------------------------------------------------------------------------------
def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def record_from_row(row: Sequence[Any], *, summary: bool = False) -> JobRecord:
    """A row selected with :data:`JOB_COLUMNS` (or :data:`SUMMARY_COLUMNS`) as a
    :class:`JobRecord`. Never raises for a damaged row: unreadable fields get defaults and are
    named in ``damage``."""
    (
        job_id,
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
        id=r.text("id", job_id),
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
        cancel_requested=bool(cancel_requested),
        cancel_reason=r.opt_text("cancel_reason", cancel_reason),
        dead_letter_queue=r.opt_text("dead_letter_queue", dead_letter_queue),
        summary=summary,
    )
    return replace(record, damage=tuple(r.damage)) if r.damage else record


def claimed_from_row(row: Sequence[Any]) -> ClaimedJob:
    """A row returned by the ``claim`` statement (after its sort columns) as a ClaimedJob."""
    (
        job_id,
        task,
        queue,
        payload,
        priority,
        attempts,
        max_attempts,
        fence,
        lease_until,
        timeout,
        trace_id,
        idempotency_key,
        metadata,
        payload_version,
        created_at,
        stalls,
        workflow_id,
    ) = row
    return ClaimedJob(
        id=job_id,
        task=task,
        queue=queue,
        payload=bytes(payload),
        priority=priority,
        attempt=attempts,
        max_attempts=max_attempts,
        fence=fence,
        lease_until=float(lease_until),
        timeout=_float(timeout),
        trace_id=trace_id,
        idempotency_key=idempotency_key,
        metadata=dict(metadata or {}),
        payload_version=payload_version,
        created_at=float(created_at),
        stalls=stalls,
        workflow_id=workflow_id,
    )


def distinct(values: Iterable[str]) -> list[str]:
    """``values`` without repeats, first occurrence kept."""
    return list(dict.fromkeys(values))
