"""The read side of the SQLite backend: functions run on the reader thread's connection.

Each is one statement (or two, for :func:`waiting`), so each sees one committed snapshot.
"""

from __future__ import annotations

import sqlite3

from conveyor.backends.sqlite.queries import (
    JOB_COLUMNS,
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


def list_jobs(conn: sqlite3.Connection, flt: JobFilter, limit: int, offset: int) -> list[JobRecord]:
    where, params = filter_where(flt)
    sql = f"SELECT {JOB_COLUMNS} FROM conveyor_jobs WHERE {where} ORDER BY id DESC LIMIT ? OFFSET ?"
    return [row_to_record(r) for r in conn.execute(sql, [*params, limit, offset]).fetchall()]


def count_jobs(conn: sqlite3.Connection) -> list[CountRow]:
    """Counts by queue, task and state, sorted like the reference backend's."""
    rows = conn.execute(Q["count_jobs"]).fetchall()
    counts = sorted((str(q), str(t), str(s), int(n)) for q, t, s, n in rows)
    return [CountRow(q, t, JobState(s), n) for q, t, s, n in counts]


def list_workers(conn: sqlite3.Connection) -> list[WorkerInfo]:
    """Every registered worker, by id."""
    return [row_to_worker(row) for row in conn.execute(Q["list_workers"]).fetchall()]
