"""The PostgreSQL backend: every protocol transition as one SQL statement or transaction.

Claims are one pipelined transaction (stage due and expired jobs, then lease a batch with
``FOR UPDATE SKIP LOCKED``); fenced transitions are single statements; concurrent completions
of one client share a statement (:mod:`conveyor.backends.coalesce`). Connections,
retries, wake-ups and reads come from :class:`~conveyor.backends.postgres.client.PostgresClient`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.types.json import Json

from conveyor.backends.base import Backend, CancelOutcome
from conveyor.backends.capabilities.transactions import Transactions
from conveyor.backends.coalesce import Coalescer
from conveyor.backends.common import fail_outcome
from conveyor.backends.postgres.browse import PostgresBrowser
from conveyor.backends.postgres.client import (
    READ,
    RETRY_DELAYS,
    STALE,
    Conn,
    NoReply,
    PostgresClient,
    statement_lost,
)
from conveyor.backends.postgres.defer import PostgresDefer
from conveyor.backends.postgres.errors import is_transient, translate, translated
from conveyor.backends.postgres.events import PostgresEvents  # event bus (issue 16)
from conveyor.backends.postgres.kv import PostgresKV
from conveyor.backends.postgres.load import PostgresLoad
from conveyor.backends.postgres.statements import (
    claimed_from_row,
    distinct,
    error_json,
    filter_sql,
    like_patterns,
    stored_error,
)
from conveyor.backends.postgres.streams import PostgresStreams  # event sourcing (issue 16)
from conveyor.backends.postgres.tx import complete_on, enqueue_on, run_enqueue
from conveyor.domain.job import (
    ClaimedJob,
    EnqueueResult,
    ErrorInfo,
    JobFilter,
    JobRecord,
    LeaseStatus,
    LogEntry,
    NewJob,
    RecoveredJob,
    RetriedJobs,
    StoreDeadLetter,
    unreadable_record,
)
from conveyor.domain.states import JobState
from conveyor.errors import ConveyorError, StorageUnavailableError

if TYPE_CHECKING:
    from conveyor.backends.postgres.settings import PostgresSettings

_DELETE_BATCH = 500

#: One pending completion: (job id, fence, result, now).
CompleteItem = tuple[str, int, bytes | None, float | None]
#: One pending enqueue call: (its jobs, now).
EnqueueItem = tuple[list[NewJob], float | None]


class PostgresBackend(
    PostgresDefer,
    PostgresEvents,
    PostgresStreams,
    PostgresBrowser,
    PostgresKV,
    PostgresLoad,
    Transactions,
    PostgresClient,
    Backend,
):
    """A client of one PostgreSQL schema, made by
    :class:`~conveyor.backends.postgres.PostgresFactory`."""

    def __init__(self, settings: PostgresSettings) -> None:
        super().__init__(settings)
        self._completer: Coalescer[CompleteItem, bool] = Coalescer(
            self._complete_batch, key=lambda item: item[0]
        )
        self._enqueuer: Coalescer[EnqueueItem, list[EnqueueResult]] = Coalescer(
            self._enqueue_batch, key=id, max_batch=100
        )

    async def close(self) -> None:
        await self._enqueuer.close()
        await self._completer.close()
        await super().close()

    def stats(self) -> dict[str, Any]:
        """Counters for tests and diagnostics: notifications, LISTEN, completion batching."""
        return {
            **super().stats(),
            "complete_batches": self._completer.batches,
            "complete_items": self._completer.items,
            "enqueue_batches": self._enqueuer.batches,
            "enqueue_calls": self._enqueuer.items,
        }

    # -- producer -------------------------------------------------------------------------
    async def enqueue(
        self, jobs: Sequence[NewJob], now: float | None = None
    ) -> list[EnqueueResult]:
        if not jobs:
            return []
        return await self._enqueuer.submit((list(jobs), None if now is None else float(now)))

    async def _enqueue_batch(
        self, items: list[EnqueueItem]
    ) -> list[list[EnqueueResult] | BaseException]:
        """Store the jobs of concurrent enqueue calls in one statement per ``now`` value.

        Each call's jobs stay together (atomic) and in call order, so the result is the same as
        running the calls one after another; if the shared statement fails for a reason other
        than the connection, each call is retried alone so one bad job fails only its caller.
        """
        out: list[list[EnqueueResult] | BaseException] = [[] for _ in items]
        groups: dict[float | None, list[int]] = {}
        for i, (_, now) in enumerate(items):
            groups.setdefault(now, []).append(i)
        for now, members in groups.items():
            combined = [j for i in members for j in items[i][0]]
            try:
                results = await self._enqueue_now(combined, now)
            except StorageUnavailableError as exc:
                for i in members:
                    out[i] = exc
                continue
            except ConveyorError as exc:
                if len(members) == 1:
                    out[members[0]] = exc
                    continue
                for i in members:
                    try:
                        out[i] = await self._enqueue_now(items[i][0], now)
                    except ConveyorError as single:
                        out[i] = single
                continue
            position = 0
            for i in members:
                size = len(items[i][0])
                out[i] = results[position : position + size]
                position += size
        return out

    async def _enqueue_now(self, jobs: list[NewJob], now: float | None) -> list[EnqueueResult]:
        notify, notify_idle = self.wake.allow_jobs([j.queue for j in jobs])

        async def op(conn: Conn) -> list[EnqueueResult]:
            return await run_enqueue(
                conn,
                self._sql,
                jobs,
                now,
                self.jobs_channel,
                notify,
                own_transaction=True,
                notify_idle=notify_idle,
            )

        # A big batch gets more time than the command deadline (about 2 ms a job).
        limit = self.settings.command_timeout
        deadline = None if limit is None else limit + 0.002 * len(jobs)
        attempts = 0
        while True:
            pool = self._pool_or_fail()
            try:
                results = await self._attempt(pool, op, deadline)
                break
            except NoReply as exc:
                # Safe to repeat: job ids make a second insert of the same jobs a no-op.
                self._reset_connections(pool)
                if attempts >= len(RETRY_DELAYS):
                    raise self._no_reply_error(exc.seconds) from None
            except psycopg.Error as exc:
                if statement_lost(exc) and await self.found_pooler(pool, exc):
                    continue  # nothing was stored; again without preparing
                if not is_transient(exc) or attempts >= len(RETRY_DELAYS):
                    raise translate(exc, self.settings.url, self.schema) from exc
                self._purge_stale(pool)
            await asyncio.sleep(RETRY_DELAYS[attempts])
            attempts += 1
        if attempts:
            # After an ambiguous failure, a job found under its own id is the one we stored.
            first = {j.id: i for i, j in reversed(list(enumerate(jobs)))}
            results = [
                EnqueueResult(r.id, True, r.state) if first.get(r.id) == i else r
                for i, r in enumerate(results)
            ]
        self.wake.wake_jobs([j.queue for j in jobs])
        return results

    async def enqueue_on(
        self, conn: Conn, jobs: Sequence[NewJob], now: float | None = None
    ) -> list[EnqueueResult]:
        """Enqueue inside the caller's transaction on ``conn`` (the outbox pattern)."""
        with translated(self.settings.url, self.schema):
            return await enqueue_on(conn, jobs, now, schema=self.schema)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Conn]:
        """A pooled connection with a transaction open (``current_job().transaction()``)."""
        async with self.connection() as conn, conn.transaction():
            yield conn

    async def append_logs_on(self, conn: Conn, job_id: str, entries: Sequence[LogEntry]) -> None:
        """Log lines inside the caller's transaction on ``conn`` (they commit with it)."""
        if not entries:
            return
        params = {"id": job_id, "entries": [Json(e.to_dict()) for e in entries]}
        with translated(self.settings.url, self.schema):
            await conn.execute(self._sql["append_logs"], params)

    async def complete_on(
        self, conn: Conn, job_id: str, fence: int, result: bytes | None, now: float | None = None
    ) -> bool:
        """Fenced completion inside the caller's transaction on ``conn``."""
        with translated(self.settings.url, self.schema):
            return await complete_on(conn, job_id, fence, result, now, schema=self.schema)

    # -- worker ---------------------------------------------------------------------------
    async def claim(
        self,
        worker_id: str,
        queues: Sequence[str],
        limit: int,
        lease: float,
        now: float | None = None,
        *,
        tasks: Sequence[str] | None = None,
        exclude_tasks: Sequence[str] = (),
    ) -> list[ClaimedJob]:
        if limit <= 0:
            return []
        order = distinct(queues)
        params = {
            "now": None if now is None else float(now),
            "queues": order,
            "limit": int(limit),
            "worker": worker_id,
            "lease": float(lease),
            "patterns": like_patterns(tasks),
            "exclude": list(exclude_tasks),
        }
        stage, claim = self._sql["stage"], self._sql["claim"]

        async def op(conn: Conn) -> list[tuple[Any, ...]]:
            # One round trip: both statements and one Sync. Without BEGIN, the statements up
            # to the Sync form one implicit transaction (an error rolls back both), and the
            # rows are read only after it committed.
            async with conn.pipeline():
                await conn.execute(stage, {"now": params["now"]})
                cur = await conn.execute(claim, params)
            return await cur.fetchall()

        dead: list[StoreDeadLetter] = []
        jobs = _claimed(await self._run(op, STALE), dead)
        self.note_store_dead_letters(dead)
        return jobs

    async def complete_and_claim(
        self,
        job_id: str,
        fence: int,
        result: bytes | None,
        worker_id: str,
        queues: Sequence[str],
        limit: int,
        lease: float,
        now: float | None = None,
        *,
        tasks: Sequence[str] | None = None,
        exclude_tasks: Sequence[str] = (),
    ) -> tuple[bool, list[ClaimedJob]]:
        """:meth:`complete` then :meth:`claim` in one round trip and one transaction (one
        commit instead of two): a worker running one job at a time asks for the next as it
        completes this one. Not part of the :class:`Backend` protocol (yet); same semantics
        as the two calls: when the fused statements fail, the completion is done alone and
        nothing is claimed (the worker's own next claim meets the error)."""
        if limit <= 0:
            return await self.complete(job_id, fence, result, now), []
        at = None if now is None else float(now)
        channel = self.wake.allow_done()
        one = {
            "id": job_id,
            "fence": int(fence),
            "result": result,
            "now": at,
            "channel": channel,
            "repeat": True,
        }
        params = {
            "now": at,
            "queues": distinct(queues),
            "limit": int(limit),
            "worker": worker_id,
            "lease": float(lease),
            "patterns": like_patterns(tasks),
            "exclude": list(exclude_tasks),
        }
        complete, stage, claim = self._sql["complete"], self._sql["stage"], self._sql["claim"]

        async def op(conn: Conn) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
            # One round trip and one implicit transaction (up to the pipeline's Sync), as in
            # claim(): an error rolls all three back.
            async with conn.pipeline():
                done_cur = await conn.execute(complete, one)
                await conn.execute(stage, {"now": params["now"]})
                cur = await conn.execute(claim, params)
            return await done_cur.fetchall(), await cur.fetchall()

        try:
            done_rows, rows = await self._run(op, STALE)
        except StorageUnavailableError:
            # The outcome is unknown (as in complete()); whatever the claim may have leased is
            # recovered when its lease expires.
            record = await self.get_job(job_id)
            if record is None or record.fence != fence:
                return False, []
            if record.state is JobState.RUNNING:
                return await self.complete(job_id, fence, result, now), []
            return record.state is JobState.COMPLETED, []
        except ConveyorError:
            # The statements were rolled back together: complete alone, claim nothing.
            return await self.complete(job_id, fence, result, now), []
        if done_rows:
            self.wake.wake_done()
        dead: list[StoreDeadLetter] = []
        jobs = _claimed(rows, dead)
        self.note_store_dead_letters(dead)
        return bool(done_rows), jobs

    async def complete(
        self, job_id: str, fence: int, result: bytes | None, now: float | None = None
    ) -> bool:
        item = (job_id, int(fence), result, None if now is None else float(now))
        try:
            done = await self._completer.submit(item)
        except StorageUnavailableError:
            # The outcome is unknown. Completed under our fence means it was us (a new claim
            # would have raised the fence); still running under it means it never happened.
            record = await self.get_job(job_id)
            if record is None or record.fence != fence:
                return False
            if record.state is JobState.RUNNING:
                done = (await self._complete_batch([item]))[0]
            else:
                done = record.state is JobState.COMPLETED
        return done

    async def _complete_batch(self, items: list[CompleteItem]) -> list[bool]:
        """Complete several jobs in one statement; one flag per item (lease still held)."""
        channel = self.wake.allow_done()
        if len(items) == 1:  # scalar parameters are cheaper to send than arrays
            job_id, fence, result, now = items[0]
            one = {
                "id": job_id,
                "fence": fence,
                "result": result,
                "now": now,
                "channel": channel,
                "repeat": True,
            }
            rows = await self._fetchall("complete", one, STALE)
        else:
            params = {
                "ids": [i[0] for i in items],
                "fences": [i[1] for i in items],
                "results": [i[2] for i in items],
                "nows": [i[3] for i in items],
                "channel": channel,
            }
            rows = await self._fetchall("complete_batch", params, STALE)
        done = {r[0] for r in rows if r[0] is not None}
        if done:
            self.wake.wake_done()
        return [i[0] in done for i in items]

    async def fail(
        self,
        job_id: str,
        fence: int,
        error: ErrorInfo,
        *,
        retry_delay: float | None,
        now: float | None = None,
        terminal: JobState = JobState.FAILED,
        dead_letter_queue: str | None = None,
    ) -> JobState | None:
        written = error_json(error)
        wrote, seen = fail_outcome(retry_delay, terminal)
        jobs_channel = done_channel = None
        if retry_delay is None:
            done_channel = self.wake.allow_done()
        else:
            jobs_channel = self.wake.allow_jobs_any()
        params = {
            "id": job_id,
            "fence": fence,
            "now": now,
            "delay": None if retry_delay is None else float(retry_delay),
            "terminal": JobState(terminal).value,
            "dlq": dead_letter_queue,
            "error": written,
            "jobs_channel": jobs_channel,
            "done_channel": done_channel,
            "wrote": wrote.value,
            "seen": [state.value for state in seen],
        }
        try:
            rows = await self._fetchall("fail", params, STALE)
        except StorageUnavailableError:
            # The outcome is unknown; the fence and the error record tell whether it was ours.
            record = await self.get_job(job_id)
            if record is None or record.fence != fence:
                return None
            if record.state is JobState.RUNNING:
                rows = await self._fetchall("fail", params, STALE)
            elif record.state in seen and record.error == stored_error(written):
                rows = [(wrote.value,)]
            else:
                return None
        if not rows:
            return None
        state = JobState(rows[0][0])
        if retry_delay is None:
            self.wake.wake_done()
        else:
            self.wake.wake_jobs(None)
        return state

    async def release(self, job_id: str, fence: int, now: float | None = None) -> bool:
        params = {"id": job_id, "fence": fence, "channel": self.wake.allow_jobs_any()}
        try:
            rows = await self._fetchall("release", params, STALE)
        except StorageUnavailableError:
            # The outcome is unknown: queued again under our fence means it was handed back.
            record = await self.get_job(job_id)
            if record is None or record.fence != fence:
                return False
            if record.state is JobState.RUNNING:
                rows = await self._fetchall("release", params, STALE)
            elif record.state is JobState.QUEUED and record.lease_owner is None:
                rows = [(record.queue,)]
            else:
                return False
        if rows:
            self.wake.wake_jobs([rows[0][0]])
        return bool(rows)

    async def heartbeat(
        self,
        worker_id: str,
        leases: Sequence[tuple[str, int]],
        lease: float,
        now: float | None = None,
    ) -> list[LeaseStatus]:
        if not leases:
            return []
        params = {
            "now": now,
            "lease": float(lease),
            "ids": [job_id for job_id, _ in leases],
            "fences": [int(fence) for _, fence in leases],
        }
        rows = await self._fetchall("heartbeat", params, READ)
        held = {(r[0], int(r[1])): bool(r[2]) for r in rows}
        out = []
        for job_id, fence in leases:
            key = (job_id, int(fence))
            if key in held:
                out.append(LeaseStatus(job_id, held=True, cancel_requested=held[key]))
            else:
                out.append(LeaseStatus(job_id, held=False))
        return out

    async def recover_expired(
        self, max_stalls: int, now: float | None = None, limit: int = 1000
    ) -> list[RecoveredJob]:
        if limit <= 0:
            return []
        params = {
            "now": now,
            "max_stalls": int(max_stalls),
            "limit": int(limit),
            "jobs_channel": self.jobs_channel,
            "done_channel": self.done_channel,
        }
        rows = await self._fetchall("recover", params, STALE)
        rows.sort(key=lambda r: (r[0], r[1]))
        out = [RecoveredJob(r[1], r[2], r[3], JobState(r[4]), r[5], r[6]) for r in rows]
        if out:
            self.wake.wake_all()
        return out

    async def set_progress(
        self, job_id: str, fence: int, progress: bytes, now: float | None = None
    ) -> bool:
        rows = await self._fetchall(
            "set_progress", {"id": job_id, "fence": fence, "progress": progress}, READ
        )
        return bool(rows)

    async def append_logs(self, job_id: str, entries: Sequence[LogEntry]) -> None:
        if not entries:
            return
        params = {"id": job_id, "entries": [Json(e.to_dict()) for e in entries]}
        try:
            await self._fetchall("append_logs", params, STALE)
        except StorageUnavailableError:
            raise
        except Exception as exc:  # the job was deleted between the check and the insert
            if not isinstance(exc.__cause__, pg_errors.ForeignKeyViolation):
                raise

    async def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:
        async def probe() -> tuple[bool, float | None, float]:
            rows = await self._fetchall("wait_probe", {"queues": list(queues)}, READ)
            ready, next_due, server_now = rows[0]
            return bool(ready), None if next_due is None else float(next_due), float(server_now)

        await self.wake.wait_for_jobs(queues, timeout, probe)

    async def wait_for_finish(self, job_id: str, timeout: float) -> JobRecord | None:
        return await self.wake.wait_for_finish(timeout, lambda: self.get_job(job_id))

    # -- operating ------------------------------------------------------------------------
    async def cancel(
        self, job_id: str, reason: str | None = None, now: float | None = None
    ) -> CancelOutcome:
        params = {"id": job_id, "reason": reason, "now": now, "done_channel": self.done_channel}
        rows = await self._fetchall("cancel", params, STALE)
        new_state, seen, _ = rows[0]
        if new_state == JobState.CANCELLED.value:
            self.wake.wake_done()
            return CancelOutcome.CANCELLED
        if new_state == JobState.RUNNING.value:
            return CancelOutcome.REQUESTED
        return CancelOutcome.NOT_FOUND if seen is None else CancelOutcome.NOT_CANCELLABLE

    async def retry_jobs(
        self,
        flt: JobFilter,
        *,
        reset_attempts: bool = False,
        now: float | None = None,
        limit: int = 1000,
    ) -> RetriedJobs:
        if limit <= 0:
            return RetriedJobs()
        where, params = filter_sql(flt)
        page_sql = self._sql["retry_page"].replace("{filter}", where)
        lock_keys, holders_sql, update = (
            self._sql["enqueue_lock_keys"],
            self._sql["key_holders"],
            self._sql["retry_ids"],
        )

        async def op(conn: Conn) -> RetriedJobs:
            # One transaction: the rows looked at are locked, and so are their keys (as an
            # enqueue locks them), so no enqueue or other retry takes a key meanwhile.
            ids: list[str] = []
            refused: dict[str, str] = {}
            after = ""
            async with conn.transaction():
                while len(ids) < limit:
                    cur = await conn.execute(
                        page_sql, {**params, "after": after, "page": max(int(limit), 100)}
                    )
                    rows = await cur.fetchall()
                    if not rows:
                        break
                    keys = sorted({key for _, key in rows if key is not None})
                    held: dict[str, list[str]] = {}
                    if keys:
                        await conn.execute(lock_keys, {"keys": keys})
                        cur = await conn.execute(holders_sql, {"keys": keys})
                        for key, holder in await cur.fetchall():
                            held.setdefault(key, []).append(holder)
                    chosen: list[str] = []
                    for job_id, key in rows:
                        after = job_id
                        if len(ids) + len(chosen) >= limit:
                            break
                        if key is not None:
                            holder = next((h for h in held.get(key, ()) if h != job_id), None)
                            if holder is not None:  # one live holder per key
                                refused[job_id] = holder
                                continue
                            held[key] = [job_id]
                        chosen.append(job_id)
                    if chosen:
                        cur = await conn.execute(
                            update,
                            {
                                "ids": chosen,
                                "now": now,
                                "reset": bool(reset_attempts),
                                "channel": self.jobs_channel,
                            },
                        )
                        ids += [row[0] for row in await cur.fetchall()]
            return RetriedJobs(ids, refused)

        done: RetriedJobs = await self._run(op, STALE)
        if done:
            self.wake.wake_jobs(None)
        return done

    async def delete_jobs(self, flt: JobFilter, *, limit: int = 1000) -> int:
        where, params = filter_sql(flt)
        sql = self._sql["delete_batch"].replace("{filter}", where)
        deleted = 0
        while deleted < limit:
            batch = min(_DELETE_BATCH, limit - deleted)
            step = {**params, "limit": batch}

            async def op(conn: Conn, step: dict[str, Any] = step) -> int:
                cur = await conn.execute(sql, step)
                row = await cur.fetchone()
                return int(row[0]) if row else 0

            n = await self._run(op, STALE)
            deleted += n
            if n < batch:
                break
        return deleted


def _claimed(
    rows: list[tuple[Any, ...]], dead: list[StoreDeadLetter] | None = None
) -> list[ClaimedJob]:
    """The rows of the ``claim`` statement as jobs, in queue precedence and claim order; the
    rows it dead-lettered instead (an unreadable record) go to ``dead``."""
    running = [r for r in rows if r[-1] == "running"]
    if dead is not None:
        for r in rows:
            if r[-1] != "running":
                error = unreadable_record("metadata is not a JSON object", r[6], time.time())
                dead.append(StoreDeadLetter(r[1], r[2], r[3], r[6], error))
    running.sort(key=lambda r: (r[0], -r[5], r[-2], r[1]))
    return [claimed_from_row(r[1:-2]) for r in running]
