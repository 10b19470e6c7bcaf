"""Enqueue and complete inside the caller's own PostgreSQL transaction.

The outbox pattern: :func:`enqueue_on` (async) and :func:`enqueue_on_sync` store jobs with the
application's own psycopg connection, inside whatever transaction it has open, and never
commit. The jobs exist if and only if that transaction commits; the NOTIFY that wakes workers
is delivered by PostgreSQL at commit, and dropped on rollback.

:func:`complete_on` is the fenced completion done the same way, so a handler's own writes and
the job's completion commit (or roll back) together.

The batch logic (one multi-row ``INSERT … SELECT FROM unnest(…)`` per call, then resolving the
rows an idempotency key or an existing id kept out) is shared with the backend's own
``enqueue``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import psycopg

from conveyor.backends.postgres.statements import channels, distinct, dumps, queries
from conveyor.domain.job import EnqueueResult, NewJob
from conveyor.domain.states import JobState

__all__ = ["EnqueueBatch", "complete_on", "complete_on_sync", "enqueue_on", "enqueue_on_sync"]

DEFAULT_SCHEMA = "conveyor"
_MAX_ROUNDS = 5


def _f(value: float | None) -> float | None:
    return None if value is None else float(value)


class EnqueueBatch:
    """One enqueue call: the insert parameters and the resolution of its results.

    Rows are sent once per distinct id (the first occurrence); a later row with a repeated id
    and any row the insert skipped (its key is held, or its id exists) is resolved afterwards
    to the job that holds its key, else the job with its id — the memory backend's rules.
    """

    def __init__(self, jobs: Sequence[NewJob]) -> None:
        self.jobs = list(jobs)
        self.results: list[EnqueueResult | None] = [None] * len(self.jobs)
        self.pending: list[int] = list(range(len(self.jobs)))

    def insert_params(
        self,
        now: float | None,
        channel: str | None,
        notify: Sequence[str],
        notify_idle: Sequence[str] = (),
    ) -> tuple[list[int], dict[str, Any]]:
        """The rows to insert this round (indices) and the ``enqueue`` statement parameters:
        ``channel`` gets a notification for each queue in ``notify``, and for each queue in
        ``notify_idle`` without a backlog (see ``queries.sql``)."""
        seen: set[str] = set()
        rows: list[int] = []
        for i in self.pending:
            job_id = self.jobs[i].id
            if job_id not in seen:
                seen.add(job_id)
                rows.append(i)
        jobs = [self.jobs[i] for i in rows]
        params: dict[str, Any] = {
            "now": _f(now),
            "keys": [j.idempotency_key for j in jobs],
            "channel": channel,
            "notify": list(notify) if channel is not None else [],
            "notify_idle": list(notify_idle) if channel is not None else [],
        }
        if len(rows) == 1:  # enqueue_one: scalars, see statement()
            return rows, params
        params |= {
            "ids": [j.id for j in jobs],
            "tasks": [j.task for j in jobs],
            "queues": [j.queue for j in jobs],
            "payloads": [bytes(j.payload) for j in jobs],
            "priorities": [int(j.priority) for j in jobs],
            "run_ats": [_f(j.run_at) for j in jobs],
            "max_attempts": [int(j.max_attempts) for j in jobs],
            "timeouts": [_f(j.timeout) for j in jobs],
            "expires": [_f(j.expires_at) for j in jobs],
            "ckeys": [j.concurrency_key for j in jobs],
            "traces": [j.trace_id for j in jobs],
            "metas": [json.dumps(j.metadata) if j.metadata else None for j in jobs],
            "workflows": [j.workflow_id for j in jobs],
            "parents": [dumps(list(j.parents)) if j.parents else None for j in jobs],
            "versions": [int(j.payload_version) for j in jobs],
            "blocked": [bool(j.blocked) for j in jobs],
            "delays": [_f(j.delay) for j in jobs],
        }
        return rows, params

    def statement(self, rows: list[int], params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The insert statement for this round and its parameters: ``enqueue_one`` with
        scalars for a single row, else ``enqueue`` (no keys) or ``enqueue_keyed``."""
        if len(rows) == 1:
            j = self.jobs[rows[0]]
            if_idle = j.queue not in params["notify"]
            wanted = not if_idle or j.queue in params["notify_idle"]
            channel = params["channel"] if wanted else None
            return "enqueue_one", {
                "now": params["now"],
                "id": j.id,
                "task": j.task,
                "queue": j.queue,
                "payload": bytes(j.payload),
                "priority": int(j.priority),
                "run_at": _f(j.run_at),
                "max_attempts": int(j.max_attempts),
                "timeout": _f(j.timeout),
                "expires": _f(j.expires_at),
                "key": j.idempotency_key,
                "ckey": j.concurrency_key,
                "trace": j.trace_id,
                "meta": json.dumps(j.metadata) if j.metadata else "{}",
                "workflow": j.workflow_id,
                "parents": list(j.parents),
                "version": int(j.payload_version),
                "blocked": bool(j.blocked),
                "delay": _f(j.delay),
                "channel": channel,
                "if_idle": if_idle,
            }
        keyed = any(self.jobs[i].idempotency_key is not None for i in rows)
        return ("enqueue_keyed" if keyed else "enqueue"), params

    def record_inserted(self, rows: list[int], inserted: Sequence[Sequence[Any]]) -> None:
        """Mark the rows the insert stored; the rest stay pending for resolution."""
        states = {str(r[0]): JobState(r[1]) for r in inserted}
        for i in rows:
            job_id = self.jobs[i].id
            if job_id in states:
                self.results[i] = EnqueueResult(job_id, True, states.pop(job_id))
        self.pending = [i for i in self.pending if self.results[i] is None]

    def resolve_params(self) -> dict[str, Any]:
        """Parameters of ``enqueue_resolve`` for the pending rows."""
        jobs = [self.jobs[i] for i in self.pending]
        return {"ids": [j.id for j in jobs], "keys": [j.idempotency_key for j in jobs]}

    def record_resolved(self, resolved: Sequence[Sequence[Any]]) -> None:
        """Attach existing jobs to pending rows; rows whose holder vanished stay pending."""
        pending = self.pending
        for ord_, job_id, state in resolved:
            if job_id is not None:
                i = pending[int(ord_) - 1]
                self.results[i] = EnqueueResult(str(job_id), False, JobState(state))
        self.pending = [i for i in pending if self.results[i] is None]

    def done(self) -> list[EnqueueResult]:
        """The results, one per job in input order."""
        out = [r for r in self.results if r is not None]
        if len(out) != len(self.jobs):
            raise RuntimeError("enqueue did not settle; concurrent changes kept it from resolving")
        return out


def _has_keys(jobs: Sequence[NewJob]) -> bool:
    return any(j.idempotency_key is not None for j in jobs)


async def run_enqueue(
    conn: psycopg.AsyncConnection[Any],
    sql: dict[str, str],
    jobs: Sequence[NewJob],
    now: float | None,
    channel: str | None,
    notify: Sequence[str],
    *,
    own_transaction: bool,
    notify_idle: Sequence[str] = (),
) -> list[EnqueueResult]:
    """Run the enqueue rounds on ``conn``.

    With ``own_transaction`` (a pooled autocommit connection, no transaction open) a batch with
    idempotency keys runs as one pipeline (lock keys, insert: one round trip, one implicit
    transaction) and one without keys as a single autocommit statement. Otherwise the
    statements run in the caller's transaction.
    """
    batch = EnqueueBatch(jobs)
    for _ in range(_MAX_ROUNDS):
        rows, params = batch.insert_params(now, channel, notify, notify_idle)
        name, values = batch.statement(rows, params)
        if not _has_keys([batch.jobs[i] for i in rows]):
            cur = await conn.execute(sql[name], values)
            inserted = await cur.fetchall()
        elif own_transaction:
            # One round trip; the two statements share the implicit transaction that ends at
            # the pipeline's Sync, so the key locks are held until the insert is committed.
            async with conn.pipeline():
                await conn.execute(sql["enqueue_lock_keys"], {"keys": params["keys"]})
                cur = await conn.execute(sql[name], values)
            inserted = await cur.fetchall()
        else:
            await conn.execute(sql["enqueue_lock_keys"], {"keys": params["keys"]})
            cur = await conn.execute(sql[name], values)
            inserted = await cur.fetchall()
        batch.record_inserted(rows, inserted)
        if not batch.pending:
            break
        cur = await conn.execute(sql["enqueue_resolve"], batch.resolve_params())
        batch.record_resolved(await cur.fetchall())
        if not batch.pending:
            break
    return batch.done()


def _outside_transaction(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """An autocommit connection with no transaction open: each statement would commit alone."""
    return bool(conn.autocommit) and (
        conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    )


async def enqueue_on(
    conn: psycopg.AsyncConnection[Any],
    jobs: Sequence[NewJob],
    now: float | None = None,
    *,
    schema: str = DEFAULT_SCHEMA,
) -> list[EnqueueResult]:
    """Store ``jobs`` through ``conn`` inside its current transaction, without committing.

    The caller owns the transaction: the jobs become visible to workers when it commits and
    vanish if it rolls back. An idempotency key stays locked until then, so a concurrent
    enqueue of the same key waits for the outcome. On an autocommit connection with no
    transaction open the call runs in a transaction of its own.
    """
    if not jobs:
        return []
    sql = queries(schema)
    channel = channels(schema)[0]
    queues = distinct(j.queue for j in jobs)
    if _outside_transaction(conn):
        async with conn.transaction():
            return await run_enqueue(conn, sql, jobs, now, channel, queues, own_transaction=False)
    return await run_enqueue(conn, sql, jobs, now, channel, queues, own_transaction=False)


def _enqueue_sync(
    conn: psycopg.Connection[Any], schema: str, jobs: Sequence[NewJob], now: float | None
) -> list[EnqueueResult]:
    sql = queries(schema)
    channel = channels(schema)[0]
    batch = EnqueueBatch(jobs)
    queues = distinct(j.queue for j in jobs)
    for _ in range(_MAX_ROUNDS):
        rows, params = batch.insert_params(now, channel, queues)
        name, values = batch.statement(rows, params)
        if _has_keys([batch.jobs[i] for i in rows]):
            conn.execute(sql["enqueue_lock_keys"], {"keys": params["keys"]})
        batch.record_inserted(rows, conn.execute(sql[name], values).fetchall())
        if not batch.pending:
            break
        cur = conn.execute(sql["enqueue_resolve"], batch.resolve_params())
        batch.record_resolved(cur.fetchall())
        if not batch.pending:
            break
    return batch.done()


def enqueue_on_sync(
    conn: psycopg.Connection[Any],
    jobs: Sequence[NewJob],
    now: float | None = None,
    *,
    schema: str = DEFAULT_SCHEMA,
) -> list[EnqueueResult]:
    """Blocking :func:`enqueue_on` for a synchronous psycopg connection (Django, Flask, …)."""
    if not jobs:
        return []
    if _outside_transaction(conn):
        with conn.transaction():
            return _enqueue_sync(conn, schema, jobs, now)
    return _enqueue_sync(conn, schema, jobs, now)


def _complete_params(
    job_id: str, fence: int, result: bytes | None, now: float | None, channel: str | None
) -> dict[str, Any]:
    # repeat=False: inside the caller's transaction only a held lease counts (a repeat would
    # commit the caller's writes a second time).
    return {
        "id": job_id,
        "fence": fence,
        "result": result,
        "now": _f(now),
        "channel": channel,
        "repeat": False,
    }


async def complete_on(
    conn: psycopg.AsyncConnection[Any],
    job_id: str,
    fence: int,
    result: bytes | None,
    now: float | None = None,
    *,
    schema: str = DEFAULT_SCHEMA,
    notify: bool = True,
) -> bool:
    """Complete a running job through ``conn`` inside its open transaction, fenced.

    Returns ``False`` (and changes nothing) when the lease is no longer held under ``fence``.
    The completion commits with the caller's transaction, together with whatever else the
    handler wrote in it; on rollback the job stays running and its lease decides what follows.
    ``notify`` wakes ``wait_for_finish`` callers at commit (one NOTIFY per call; turn it off
    for very high completion rates and let them poll).
    """
    channel = channels(schema)[1] if notify else None
    cur = await conn.execute(
        queries(schema)["complete"], _complete_params(job_id, fence, result, now, channel)
    )
    return await cur.fetchone() is not None


def complete_on_sync(
    conn: psycopg.Connection[Any],
    job_id: str,
    fence: int,
    result: bytes | None,
    now: float | None = None,
    *,
    schema: str = DEFAULT_SCHEMA,
    notify: bool = True,
) -> bool:
    """Blocking :func:`complete_on` for a synchronous psycopg connection."""
    channel = channels(schema)[1] if notify else None
    cur = conn.execute(
        queries(schema)["complete"], _complete_params(job_id, fence, result, now, channel)
    )
    return cur.fetchone() is not None
