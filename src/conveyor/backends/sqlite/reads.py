"""The read side of the SQLite backend: functions run on the reader thread's connection.

Each is one statement (or two, for :func:`waiting`), so each sees one committed snapshot.
"""

from __future__ import annotations

import sqlite3

from conveyor.backends.sqlite.queries import (
    JOB_COLUMNS,
    SUMMARY_COLUMNS,
    Q,
    filter_where,
    row_to_record,
    row_to_worker,
)
from conveyor.domain.job import CountRow, JobFilter, JobRecord, WorkerInfo
from conveyor.domain.states import JobState


def waiting(conn: sqlite3.Connection, queues: str) -> tuple[bool, float | None]:
    """Whether a job is queued in ``queues`` (a JSON list), else the next scheduled run-at."""
    if conn.execute(Q["waiting_ready"], (queues,)).fetchall():
        return True, None
    rows = conn.execute(Q["waiting_next_due"], (queues,)).fetchall()
    return False, (rows[0][0] if rows else None)


def get_job(conn: sqlite3.Connection, job_id: str) -> JobRecord | None:
    """One full record, or ``None``."""
    rows = conn.execute(f"SELECT {JOB_COLUMNS} FROM conveyor_jobs WHERE id = ?", (job_id,))
    found = rows.fetchall()
    return row_to_record(found[0]) if found else None


def list_jobs(
    conn: sqlite3.Connection, flt: JobFilter, limit: int, offset: int, *, summary: bool = False
) -> list[JobRecord]:
    where, params = filter_where(flt)
    columns = SUMMARY_COLUMNS if summary else JOB_COLUMNS
    sql = f"SELECT {columns} FROM conveyor_jobs WHERE {where} ORDER BY id DESC LIMIT ? OFFSET ?"
    rows = conn.execute(sql, [*params, limit, offset]).fetchall()
    return [row_to_record(r, summary=summary) for r in rows]


def count_jobs(conn: sqlite3.Connection) -> list[CountRow]:
    """Counts by queue, task and state, sorted like the reference backend's. A stored state
    that is not a job state (a damaged row) counts as ``unknown``."""
    merged: dict[tuple[str, str, JobState], int] = {}
    for q, t, s, n in conn.execute(Q["count_jobs"]).fetchall():
        try:
            state = JobState(str(s))
        except ValueError:
            state = JobState.UNKNOWN
        key = (str(q), str(t), state)
        merged[key] = merged.get(key, 0) + int(n)
    return [CountRow(q, t, s, n) for (q, t, s), n in sorted(merged.items())]


def list_workers(conn: sqlite3.Connection) -> list[WorkerInfo]:
    """Every registered worker, by id."""
    return [row_to_worker(row) for row in conn.execute(Q["list_workers"]).fetchall()]
