"""The state transitions of the SQLite backend, as plain functions over a connection.

Each write function runs inside the ``BEGIN IMMEDIATE`` transaction the engine's writer thread
opened, records what it did in :class:`~conveyor.backends.sqlite.notify.Effects`, and mirrors
the corresponding method of :class:`~conveyor.backends.memory.MemoryBackend` exactly.
``now`` is ``None`` for the host clock, read when the transition runs.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from conveyor.backends.base import CancelOutcome
from conveyor.backends.common import (
    RETRYABLE_STATES,
    SUSPECT_STALLS,
    repeated_complete,
    repeated_fail,
    repeated_release,
)
from conveyor.backends.sqlite.notify import Effects
from conveyor.backends.sqlite.queries import Q, dumps, error_line, filter_where
from conveyor.backends.sqlite.reads import get_job
from conveyor.domain.job import (
    ClaimedJob,
    EnqueueResult,
    ErrorInfo,
    JobFilter,
    LeaseStatus,
    NewJob,
    RecoveredJob,
    RetriedJobs,
    StoreDeadLetter,
    unreadable_record,
)
from conveyor.domain.states import KEY_HOLDING_STATES, TERMINAL_STATES, JobState
from conveyor.errors import ErrorCode


def _clock(now: float | None) -> float:
    return time.time() if now is None else now


def _one(cursor: sqlite3.Cursor) -> Any:
    """The first row or ``None``; always runs the statement to the end (so it is reset
    before COMMIT)."""
    rows = cursor.fetchall()
    return rows[0] if rows else None


# -- producer ------------------------------------------------------------------------------
def enqueue(
    conn: sqlite3.Connection,
    fx: Effects,
    jobs: Sequence[NewJob],
    encoded: Sequence[tuple[str, str]],
    now: float | None,
) -> list[EnqueueResult]:
    """Store jobs in order, honouring idempotency keys and existing ids (see ``Backend``).

    ``encoded`` holds each job's metadata and parents as JSON text, made by the caller.
    """
    t = _clock(now)
    keys = [job.idempotency_key for job in jobs if job.idempotency_key is not None]
    holders: dict[str, tuple[str, JobState]] = {}
    if keys:
        for key, job_id, state in conn.execute(Q["key_holders"], (dumps(keys),)).fetchall():
            if JobState(state) in KEY_HOLDING_STATES:
                holders[key] = (job_id, JobState(state))
    plan = _plan(jobs, encoded, dict(holders), {}, t)
    conn.execute("SAVEPOINT conveyor_enqueue")
    try:
        conn.executemany(Q["insert_job"], plan.rows)
    except sqlite3.IntegrityError:
        # Some ids exist already (a repeated enqueue): plan again knowing which.
        conn.execute("ROLLBACK TO conveyor_enqueue")
        ids = [job.id for job in jobs]
        existing = {
            row[0]: JobState(row[1])
            for row in conn.execute(Q["existing_among"], (dumps(ids),)).fetchall()
        }
        plan = _plan(jobs, encoded, dict(holders), existing, t)
        conn.executemany(Q["insert_job"], plan.rows)
    conn.execute("RELEASE conveyor_enqueue")
    if plan.keys:
        conn.executemany(Q["take_key"], plan.keys)
    for result, job in zip(plan.results, jobs, strict=True):
        if result.created:
            if result.state is JobState.QUEUED:
                fx.ready.add(job.queue)
            elif result.state is JobState.SCHEDULED:
                fx.scheduled.add(job.queue)
    return plan.results


@dataclass(slots=True)
class _Plan:
    results: list[EnqueueResult]
    rows: list[tuple[Any, ...]]
    keys: list[tuple[str, str]]


def _plan(
    jobs: Sequence[NewJob],
    encoded: Sequence[tuple[str, str]],
    holders: dict[str, tuple[str, JobState]],
    existing: dict[str, JobState],
    t: float,
) -> _Plan:
    plan = _Plan([], [], [])
    for job, (metadata, parents) in zip(jobs, encoded, strict=True):
        key = job.idempotency_key
        if key is not None and key in holders:
            holder_id, holder_state = holders[key]
            plan.results.append(EnqueueResult(holder_id, False, holder_state))
            continue
        if job.id in existing:
            plan.results.append(EnqueueResult(job.id, False, existing[job.id]))
            continue
        run_at = job.run_at if job.run_at is not None else t + (job.delay or 0.0)
        if job.blocked:
            state, text = JobState.BLOCKED, "blocked"
        elif run_at > t:
            state, text = JobState.SCHEDULED, "scheduled"
        else:
            state, text = JobState.QUEUED, "queued"
        plan.rows.append(
            (
                job.id,
                job.task,
                job.queue,
                text,
                job.payload,
                job.priority,
                run_at,
                job.max_attempts,
                t,
                job.timeout,
                job.expires_at,
                key,
                job.concurrency_key,
                job.trace_id,
                metadata,
                job.workflow_id,
                parents,
                job.payload_version,
            )
        )
        existing[job.id] = state
        if key is not None:
            holders[key] = (job.id, state)
            plan.keys.append((key, job.id))
        plan.results.append(EnqueueResult(job.id, True, state))
    return plan


# -- worker ----------------------------------------------------------------------------------
def _promote_and_expire(conn: sqlite3.Connection, fx: Effects, t: float) -> None:
    [(due, expiring_any)] = conn.execute(Q["due_work"], {"now": t}).fetchall()
    if due:
        conn.execute(Q["promote_due"], (t,))
    if not expiring_any:
        return
    expiring = conn.execute(Q["select_expiring"], (t,)).fetchall()
    rows = []
    for job_id, attempts in expiring:
        error = ErrorInfo(
            code=ErrorCode.EXPIRED,
            type="Expired",
            message="the job's TTL passed before it started",
            attempt=attempts,
            at=t,
        )
        rows.append(
            (
                JobState.EXPIRED.value,
                t,
                dumps(error.to_dict()),
                error.code,
                error_line(error),
                job_id,
            )
        )
        fx.finished.add(job_id)
    conn.executemany(Q["finish_with_error"], rows)


def claim(
    conn: sqlite3.Connection,
    fx: Effects,
    worker_id: str,
    queues: Sequence[str],
    limit: int,
    lease: float,
    now: float | None,
    patterns: list[str] | None,
    exclude: list[str],
    dead: list[StoreDeadLetter] | None = None,
) -> list[ClaimedJob]:
    """Promote and expire, then lease up to ``limit`` jobs in queue precedence order.

    ``patterns`` are task patterns already turned into GLOBs (``None`` matches all). Jobs
    dead-lettered instead because their record cannot be decoded are added to ``dead``.
    """
    t = _clock(now)
    _promote_and_expire(conn, fx, t)
    claimed: list[ClaimedJob] = []
    if patterns is not None and not patterns:
        return claimed
    filtered = patterns is not None or bool(exclude)
    params: dict[str, Any] = {"owner": worker_id, "until": t + lease, "now": t}
    if filtered:
        params["patterns"] = None if patterns is None else dumps(patterns)
        params["exclude"] = dumps(exclude)
    sql = Q["claim_filtered"] if filtered else Q["claim"]
    for n, queue in enumerate(queues):
        remaining = limit - len(claimed)
        if remaining <= 0:
            break
        params["queue"] = queue
        params["limit"] = remaining
        params["held"] = any(c.stalls >= SUSPECT_STALLS for c in claimed)
        single = remaining == 1 and not filtered
        rows = conn.execute(Q["claim_one"] if single else sql, params).fetchall()
        good = _readable(conn, fx, rows, t, dead)
        good.sort(key=lambda g: (-g[0][4], g[0][16], g[0][0]))
        claimed.extend(_claimed(row, metadata, t + lease) for row, metadata in good)
        # The claim stops at a second job that stalled before (see `claim` in queries.sql).
        if len(rows) < remaining and n + 1 < len(queues):
            probe = {
                "queue": queue,
                "patterns": params.get("patterns"),
                "exclude": params.get("exclude", "[]"),
            }
            if conn.execute(Q["claim_blocked"], probe).fetchone()[0]:
                break
    return claimed


#: Column index → (name, what it must hold) of a ``claim`` row, checked before decoding.
_INT, _NUM, _TEXT = (int,), (int, float), (str,)
_CLAIM_COLUMNS: dict[int, tuple[str, tuple[type, ...], bool]] = {
    1: ("task", _TEXT, False),
    2: ("queue", _TEXT, False),
    3: ("payload", (bytes,), False),
    4: ("priority", _INT, False),
    5: ("attempts", _INT, False),
    6: ("max_attempts", _INT, False),
    7: ("fence", _INT, False),
    8: ("timeout", _NUM, True),
    9: ("trace_id", _TEXT, True),
    10: ("idempotency_key", _TEXT, True),
    12: ("payload_version", _INT, False),
    13: ("created_at", _NUM, False),
    14: ("stalls", _INT, False),
    15: ("workflow_id", _TEXT, True),
    16: ("run_at", _NUM, False),
}


def _decode_metadata(row: tuple[Any, ...]) -> dict[str, Any] | str:
    """A claimed row's metadata, or why the row cannot be decoded (a corrupt stored field)."""
    for i, (name, types, nullable) in _CLAIM_COLUMNS.items():
        value = row[i]
        if value is None and nullable:
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            return f"{name} is {type(value).__name__} {value!r:.40}"
    try:
        metadata = json.loads(row[11])
    except (TypeError, ValueError) as exc:
        return f"metadata is not JSON ({exc})"
    if not isinstance(metadata, dict):
        return f"metadata is not a JSON object: {row[11]!r:.40}"
    return metadata


def _readable(
    conn: sqlite3.Connection,
    fx: Effects,
    rows: list[Any],
    t: float,
    dead: list[StoreDeadLetter] | None = None,
) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """The claimed rows that decode; the others are dead-lettered (``invalid_payload``) in the
    same transaction, so a corrupt record neither wedges its queue nor sinks its batch."""
    good = []
    for row in rows:
        decoded = _decode_metadata(row)
        if not isinstance(decoded, str):
            good.append((row, decoded))
            continue
        reason = decoded
        attempt = row[5] if isinstance(row[5], int) else 0
        error = unreadable_record(reason, attempt, t)
        params = {
            "id": row[0],
            "now": t,
            "error": dumps(error.to_dict()),
            "code": error.code,
            "line": error_line(error),
        }
        conn.execute(Q["fail_unreadable"], params)
        fx.finished.add(row[0])
        if dead is not None:
            task = row[1] if isinstance(row[1], str) else repr(row[1])
            queue = row[2] if isinstance(row[2], str) else repr(row[2])
            dead.append(StoreDeadLetter(str(row[0]), task, queue, attempt, error))
    return good


def _claimed(row: tuple[Any, ...], metadata: dict[str, Any], lease_until: float) -> ClaimedJob:
    return ClaimedJob(
        id=row[0],
        task=row[1],
        queue=row[2],
        payload=bytes(row[3]),
        priority=row[4],
        attempt=row[5],
        max_attempts=row[6],
        fence=row[7],
        lease_until=lease_until,
        timeout=row[8],
        trace_id=row[9],
        idempotency_key=row[10],
        metadata=metadata,
        payload_version=row[12],
        created_at=row[13],
        stalls=row[14],
        workflow_id=row[15],
    )


def complete(
    conn: sqlite3.Connection,
    fx: Effects,
    job_id: str,
    fence: int,
    result: bytes | None,
    now: float | None,
    *,
    repeat_ok: bool = True,
) -> bool:
    """Running → completed when the lease is held; ``True`` again for a repeat of a completion
    that took effect (unless ``repeat_ok`` is false: the caller's own transaction)."""
    cursor = conn.execute(Q["complete"], (result, _clock(now), job_id, fence))
    if cursor.rowcount != 1:
        return repeat_ok and repeated_complete(get_job(conn, job_id), fence)
    fx.finished.add(job_id)
    return True


def fail(
    conn: sqlite3.Connection,
    fx: Effects,
    job_id: str,
    fence: int,
    error: ErrorInfo,
    retry_delay: float | None,
    now: float | None,
    terminal: JobState,
    dead_letter_queue: str | None,
) -> JobState | None:
    """Record a failed attempt: to ``terminal``, or back to queued/scheduled for a retry."""
    t = _clock(now)
    params: dict[str, Any] = {
        "id": job_id,
        "fence": fence,
        "error": dumps(error.to_dict()),
        "code": error.code,
        "line": error_line(error),
    }
    if retry_delay is None:
        state = terminal
        params.update(
            state=state.value,
            now=t,
            dlq=dead_letter_queue if terminal is JobState.FAILED else None,
        )
        row = _one(conn.execute(Q["fail_terminal"], params))
    else:
        state = JobState.QUEUED if retry_delay <= 0 else JobState.SCHEDULED
        params.update(state=state.value, run_at=t + max(retry_delay, 0.0))
        row = _one(conn.execute(Q["fail_retry"], params))
    if row is None:  # a repeat of a failure that took effect answers its outcome
        return repeated_fail(get_job(conn, job_id), fence, error, retry_delay, terminal)
    if state is JobState.QUEUED:
        fx.ready.add(row[0])
    elif state is JobState.SCHEDULED:
        fx.scheduled.add(row[0])
    elif state in TERMINAL_STATES:
        fx.finished.add(job_id)
    return state


def release(conn: sqlite3.Connection, fx: Effects, job_id: str, fence: int) -> bool:
    """Hand a running job back: queued at once, the attempt not counted."""
    row = _one(conn.execute(Q["release"], (job_id, fence)))
    if row is None:  # a repeat of a hand-back that took effect answers the same
        return repeated_release(get_job(conn, job_id), fence)
    fx.ready.add(row[0])
    return True


def heartbeat(
    conn: sqlite3.Connection,
    fx: Effects,
    leases: Sequence[tuple[str, int]],
    lease: float,
    now: float | None,
) -> list[LeaseStatus]:
    """Extend every held lease in one statement; report each one."""
    until = _clock(now) + lease
    payload = dumps([[job_id, fence] for job_id, fence in leases])
    rows = conn.execute(Q["heartbeat"], {"until": until, "leases": payload}).fetchall()
    held = {(row[0], row[1]): bool(row[2]) for row in rows}
    out = []
    for job_id, fence in leases:
        flag = held.get((job_id, fence))
        if flag is None:
            out.append(LeaseStatus(job_id, held=False))
        else:
            out.append(LeaseStatus(job_id, held=True, cancel_requested=flag))
    return out


def recover_expired(
    conn: sqlite3.Connection, fx: Effects, max_stalls: int, now: float | None, limit: int
) -> list[RecoveredJob]:
    """Requeue, dead-letter (``poison_message``) or cancel running jobs whose lease expired."""
    t = _clock(now)
    expired = conn.execute(Q["select_lease_expired"], (t, limit)).fetchall()
    out = []
    for job_id, attempts, old_stalls, cancel_requested, cancel_reason in expired:
        stalls = old_stalls + 1
        if cancel_requested or stalls > max_stalls:
            if cancel_requested:
                state = JobState.CANCELLED
                error = ErrorInfo(
                    ErrorCode.CANCELLED,
                    "Cancelled",
                    cancel_reason or "cancelled",
                    attempt=attempts,
                    at=t,
                )
            else:
                state = JobState.FAILED
                error = ErrorInfo(
                    ErrorCode.POISON_MESSAGE,
                    "Stalled",
                    f"the job's lease expired {stalls} times (worker died or hung); "
                    f"the limit is {max_stalls}",
                    attempt=attempts,
                    at=t,
                )
            row = _one(
                conn.execute(
                    Q["recover_finish"],
                    (
                        state.value,
                        t,
                        dumps(error.to_dict()),
                        error.code,
                        error_line(error),
                        stalls,
                        job_id,
                    ),
                )
            )
            fx.finished.add(job_id)
        else:
            state = JobState.QUEUED
            row = _one(conn.execute(Q["recover_requeue"], (stalls, job_id)))
            fx.ready.add(row[1])
        out.append(RecoveredJob(job_id, row[0], row[1], state, stalls, row[2]))
    return out


def set_progress(
    conn: sqlite3.Connection, fx: Effects, job_id: str, fence: int, progress: bytes
) -> bool:
    """Store progress bytes for a job whose lease is held."""
    return conn.execute(Q["set_progress"], (progress, job_id, fence)).rowcount == 1


def append_logs(conn: sqlite3.Connection, fx: Effects, job_id: str, lines: str) -> None:
    """Append pre-encoded log lines (a no-op when the job is gone)."""
    conn.execute(Q["append_logs"], (lines, job_id))


# -- operating --------------------------------------------------------------------------------
def cancel(
    conn: sqlite3.Connection, fx: Effects, job_id: str, reason: str | None, now: float | None
) -> CancelOutcome:
    """Cancel a waiting job at once, flag a running one, refuse a finished one."""
    t = _clock(now)
    row = _one(conn.execute(Q["cancel_lookup"], (job_id,)))
    if row is None:
        return CancelOutcome.NOT_FOUND
    state = JobState(row[0])
    if state.is_waiting:
        error = ErrorInfo(
            ErrorCode.CANCELLED, "Cancelled", reason or "cancelled", attempt=row[1], at=t
        )
        conn.execute(
            Q["cancel_waiting"],
            (t, reason, dumps(error.to_dict()), error.code, error_line(error), job_id),
        )
        fx.finished.add(job_id)
        return CancelOutcome.CANCELLED
    if state is JobState.RUNNING:
        conn.execute(Q["cancel_request"], (reason, job_id))
        return CancelOutcome.REQUESTED
    return CancelOutcome.NOT_CANCELLABLE


def _select_ids(
    conn: sqlite3.Connection,
    columns: str,
    states: Sequence[JobState],
    flt: JobFilter,
    limit: int,
) -> list[tuple[Any, ...]]:
    where, params = filter_where(flt)
    sql = (
        f"SELECT {columns} FROM conveyor_jobs "
        f"WHERE state IN (SELECT value FROM json_each(?)) AND {where} ORDER BY id LIMIT ?"
    )
    return conn.execute(sql, [dumps([s.value for s in states]), *params, limit]).fetchall()


def retry_jobs(
    conn: sqlite3.Connection,
    fx: Effects,
    flt: JobFilter,
    reset_attempts: bool,
    now: float | None,
    limit: int,
) -> RetriedJobs:
    """Move up to ``limit`` matching failed/cancelled/expired jobs back to queued, in id order,
    leaving (and reporting) those whose idempotency key another job holds."""
    t = _clock(now)
    where, params = filter_where(flt)
    page = (
        f"SELECT id, queue, idempotency_key FROM conveyor_jobs "
        f"WHERE state IN (SELECT value FROM json_each(?)) AND {where} AND id > ? "
        f"ORDER BY id LIMIT ?"
    )
    states = dumps([s.value for s in RETRYABLE_STATES])
    ids: list[str] = []
    refused: dict[str, str] = {}
    last = ""
    while len(ids) < limit:
        rows = conn.execute(page, [states, *params, last, max(limit, 100)]).fetchall()
        for job_id, queue, key in rows:
            last = job_id
            if len(ids) >= limit:
                break
            if key is not None:
                holder = _key_holder(conn, key, job_id)
                if holder is not None:  # one live holder per key
                    refused[job_id] = holder
                    continue
            conn.execute(Q["retry_one"], {"now": t, "reset": int(reset_attempts), "id": job_id})
            if key is not None:
                conn.execute(Q["take_key"], (key, job_id))
            fx.ready.add(queue)
            ids.append(job_id)
        if not rows:
            break
    return RetriedJobs(ids, refused)


def _key_holder(conn: sqlite3.Connection, key: str, other_than: str) -> str | None:
    """The id of the job (not ``other_than``) that holds ``key`` now, if one does."""
    row = _one(conn.execute(Q["key_holder"], (key,)))
    if row is None or row[0] == other_than or JobState(row[1]) not in KEY_HOLDING_STATES:
        return None
    return str(row[0])


def delete_jobs(conn: sqlite3.Connection, fx: Effects, flt: JobFilter, limit: int) -> int:
    """Delete matching terminal jobs (and the idempotency keys they hold); the count."""
    terminal = sorted(TERMINAL_STATES)
    rows = _select_ids(conn, "id, idempotency_key", terminal, flt, limit)
    conn.executemany(Q["delete_one"], [(row[0],) for row in rows])
    conn.executemany(Q["release_key"], [(row[1], row[0]) for row in rows if row[1] is not None])
    return len(rows)


# -- workers -----------------------------------------------------------------------------------
def execute(conn: sqlite3.Connection, fx: Effects, sql: str, params: Sequence[Any]) -> int:
    """One plain statement (the worker registry); the number of rows it changed."""
    return conn.execute(sql, params).rowcount
