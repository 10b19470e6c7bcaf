"""The PostgreSQL backend client: every protocol transition as one SQL statement or transaction.

One :class:`PostgresBackend` belongs to one event loop. It holds an ``AsyncConnectionPool``
(autocommit connections) and, once something waits, one LISTEN connection. The SQL is in
``_sql/postgres/queries.sql``; this module runs it, maps errors and keeps the wake-ups.

Faults: a psycopg error never escapes. Reads, heartbeats and progress writes are retried a
couple of times when the connection or server went away; other writes are retried only when
the server said it was shutting the connection down before running them (or, for enqueue and
complete, when a retry is provably safe), and otherwise raise
:class:`~conveyor.errors.StorageUnavailableError`: the lease then decides what happens to the
job, which is never lost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from conveyor.backends import postgres_schema as schema_ops
from conveyor.backends.base import Backend, CancelOutcome
from conveyor.backends.postgres_errors import describe_connect_error, is_transient, translate
from conveyor.backends.postgres_listen import Listener, NotifyLimiter
from conveyor.backends.postgres_sql import (
    channels,
    claimed_from_row,
    distinct,
    dumps,
    error_json,
    filter_sql,
    like_patterns,
    queries,
    record_from_row,
)
from conveyor.backends.postgres_tx import complete_on, enqueue_on, run_enqueue
from conveyor.domain.job import (
    ClaimedJob,
    CountRow,
    EnqueueResult,
    ErrorInfo,
    JobFilter,
    JobRecord,
    LeaseStatus,
    LogEntry,
    NewJob,
    RecoveredJob,
    WorkerInfo,
)
from conveyor.domain.states import JobState
from conveyor.errors import StorageUnavailableError

if TYPE_CHECKING:
    from conveyor.backends.postgres import PostgresSettings

T = TypeVar("T")
Conn = psycopg.AsyncConnection[Any]

READ = "read"  # idempotent: retry on any connection failure
STALE = "stale"  # retry only when the server closed the connection before running it
_RETRY_DELAYS = (0.05, 0.25)
_DELETE_BATCH = 500


def _stale(exc: BaseException) -> bool:
    """The server announced it was closing the connection (restart, crash recovery,
    terminate): the statement did not run."""
    return isinstance(
        exc, pg_errors.AdminShutdown | pg_errors.CrashShutdown | pg_errors.CannotConnectNow
    )


class PostgresBackend(Backend):
    """A client of one PostgreSQL schema, made by
    :class:`~conveyor.backends.postgres.PostgresFactory`."""

    supports_transactions = True

    def __init__(self, settings: PostgresSettings) -> None:
        self.settings = settings
        self.schema = settings.schema
        self._sql = queries(settings.schema)
        self.jobs_channel, self.done_channel = channels(settings.schema)
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._listener: Listener | None = None
        self._limiter = NotifyLimiter(self._send_notify, settings.notify_interval)
        self._job_waiters: list[tuple[frozenset[str], asyncio.Event]] = []
        self._done_waiters: list[asyncio.Event] = []
        self._checks: set[asyncio.Task[None]] = set()
        self._conninfo = settings.url

    # -- lifecycle ------------------------------------------------------------------------
    async def open(self) -> None:
        s = self.settings
        try:
            conninfo = s.conninfo()
            conn = await psycopg.AsyncConnection.connect(
                conninfo, autocommit=True, connect_timeout=max(1, int(s.timeout))
            )
        except psycopg.Error as exc:
            raise StorageUnavailableError(describe_connect_error(exc, s.url)) from None
        try:
            version = await schema_ops.current_version(conn, s.schema)
            if s.auto_migrate and version != schema_ops.latest_version():
                await schema_ops.migrate(conn, s.schema)
                version = await schema_ops.current_version(conn, s.schema)
            schema_ops.check_version(version, s.schema)
        except psycopg.Error as exc:
            raise translate(exc, s.url, s.schema) from exc
        finally:
            await conn.close()
        self._conninfo = conninfo
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            conninfo,
            min_size=s.pool_min,
            max_size=s.pool_max,
            open=False,
            kwargs={"autocommit": True, "prepare_threshold": s.prepare_threshold},
            timeout=s.timeout,
            name=f"conveyor:{s.schema}",
        )
        await pool.open(wait=False)
        self._pool = pool

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.stop()
        await self._limiter.close()
        for task in list(self._checks):
            task.cancel()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
        self._wake_all()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Conn]:
        """A pooled autocommit connection for a handler's own writes (and :meth:`complete_on`)."""
        async with self._pool_or_fail().connection() as conn:
            yield conn

    def _pool_or_fail(self) -> AsyncConnectionPool[Conn]:
        if self._pool is None:
            raise StorageUnavailableError("the PostgreSQL backend is not open (call open())")
        return self._pool

    async def _run(self, op: Callable[[Conn], Awaitable[T]], retry: str | None = None) -> T:
        """Run ``op`` on a pooled connection, mapping errors and retrying per ``retry``."""
        pool = self._pool_or_fail()
        attempt = 0
        while True:
            try:
                async with pool.connection() as conn:
                    return await op(conn)
            except psycopg.Error as exc:
                if is_transient(exc):
                    self._purge_stale(pool)
                    again = retry == READ or (retry == STALE and _stale(exc))
                    if again and attempt < len(_RETRY_DELAYS):
                        await asyncio.sleep(_RETRY_DELAYS[attempt])
                        attempt += 1
                        continue
                raise translate(exc, self.settings.url, self.schema) from exc

    def _purge_stale(self, pool: AsyncConnectionPool[Conn]) -> None:
        """After a connection failure, test the idle connections in the background so the
        next calls do not pick up ones the server already closed."""
        if self._checks:
            return
        task = asyncio.get_running_loop().create_task(pool.check())
        self._checks.add(task)
        task.add_done_callback(self._check_done)

    def _check_done(self, task: asyncio.Task[None]) -> None:
        self._checks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a failed check only means the server is still away

    async def _fetchall(
        self, name: str, params: dict[str, Any], retry: str | None = None
    ) -> list[tuple[Any, ...]]:
        sql = self._sql[name]

        async def op(conn: Conn) -> list[tuple[Any, ...]]:
            cur = await conn.execute(sql, params)
            return await cur.fetchall() if cur.description is not None else []

        return await self._run(op, retry)

    # -- notifications --------------------------------------------------------------------
    async def _send_notify(self, channel: str, payload: str) -> None:
        await self._fetchall("notify", {"channel": channel, "payloads": [payload]})

    def _allow_jobs(self, queues: Sequence[str]) -> list[str]:
        """The queues this client may notify about now (the others get a trailing one)."""
        return [q for q in distinct(queues) if self._limiter.allow(self.jobs_channel, q)]

    def _allow_jobs_any(self) -> str | None:
        """The jobs channel when a notification about some queue (not known here, payload
        set by the statement) may go out now; a trailing one wakes every waiter."""
        allowed = self._limiter.allow(self.jobs_channel, "*", trailing_payload="")
        return self.jobs_channel if allowed else None

    def _allow_done(self) -> str | None:
        """The done channel when a "job finished" notification may go out now."""
        allowed = self._limiter.allow(self.done_channel, "", trailing_payload="")
        return self.done_channel if allowed else None

    def _on_notify(self, channel: str, payload: str) -> None:
        if channel == self.jobs_channel:
            self._wake_jobs([payload] if payload else None)
        else:
            self._wake_done()

    def _wake_jobs(self, queues: Sequence[str] | None) -> None:
        for names, event in self._job_waiters:
            if queues is None or not names.isdisjoint(queues):
                event.set()

    def _wake_done(self) -> None:
        for event in self._done_waiters:
            event.set()

    def _wake_all(self) -> None:
        self._wake_jobs(None)
        self._wake_done()

    async def _await_listener(self) -> None:
        """Start the LISTEN connection on first use and give it a moment to be ready, so
        the caller's first check and its first notification cannot cross."""
        if not self.settings.listen or self._pool is None:
            return
        if self._listener is None:
            self._listener = Listener(
                self._conninfo,
                [self.jobs_channel, self.done_channel],
                self._on_notify,
                self._wake_all,
                connect_timeout=self.settings.timeout,
            )
            self._listener.start()
        await self._listener.wait_ready(self.settings.poll_interval)

    # -- producer -------------------------------------------------------------------------
    async def enqueue(
        self, jobs: Sequence[NewJob], now: float | None = None
    ) -> list[EnqueueResult]:
        if not jobs:
            return []
        notify = self._allow_jobs([j.queue for j in jobs])
        channel = self.jobs_channel if notify else None
        attempts = 0
        while True:
            try:
                async with self._pool_or_fail().connection() as conn:
                    results = await run_enqueue(
                        conn, self._sql, jobs, now, channel, notify, own_transaction=True
                    )
                break
            except psycopg.Error as exc:
                # Safe to repeat: job ids make a second insert of the same jobs a no-op.
                if not is_transient(exc) or attempts >= len(_RETRY_DELAYS):
                    raise translate(exc, self.settings.url, self.schema) from exc
                self._purge_stale(self._pool_or_fail())
                await asyncio.sleep(_RETRY_DELAYS[attempts])
                attempts += 1
        if attempts:
            # After an ambiguous failure, a job found under its own id is the one we stored.
            first = {j.id: i for i, j in reversed(list(enumerate(jobs)))}
            results = [
                EnqueueResult(r.id, True, r.state) if first.get(r.id) == i else r
                for i, r in enumerate(results)
            ]
        self._wake_jobs([j.queue for j in jobs])
        return results

    async def enqueue_on(
        self, conn: Conn, jobs: Sequence[NewJob], now: float | None = None
    ) -> list[EnqueueResult]:
        """Enqueue inside the caller's transaction on ``conn`` (the outbox pattern)."""
        return await enqueue_on(conn, jobs, now, schema=self.schema)

    async def complete_on(
        self, conn: Conn, job_id: str, fence: int, result: bytes | None, now: float | None = None
    ) -> bool:
        """Fenced completion inside the caller's transaction on ``conn``."""
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
            async with conn.pipeline():
                async with conn.transaction():
                    await conn.execute(stage, {"now": params["now"]})
                    cur = await conn.execute(claim, params)
                return await cur.fetchall()

        rows = await self._run(op, STALE)
        rows.sort(key=lambda r: (r[0], -r[5], r[-1], r[1]))
        return [claimed_from_row(r[1:-1]) for r in rows]

    async def complete(
        self, job_id: str, fence: int, result: bytes | None, now: float | None = None
    ) -> bool:
        channel = self._allow_done()
        params = {"id": job_id, "fence": fence, "result": result, "now": now, "channel": channel}
        try:
            rows = await self._fetchall("complete", params, STALE)
        except StorageUnavailableError:
            # The outcome is unknown. Completed under our fence means it was us (a new claim
            # would have raised the fence); still running under it means it never happened.
            record = await self.get_job(job_id)
            if record is None or record.fence != fence:
                return False
            if record.state is JobState.RUNNING:
                rows = await self._fetchall("complete", params, STALE)
            elif record.state is not JobState.COMPLETED:
                return False
            else:
                rows = [(job_id,)]
        if rows:
            self._wake_done()
        return bool(rows)

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
        jobs_channel = done_channel = None
        if retry_delay is None:
            done_channel = self._allow_done()
        else:
            jobs_channel = self._allow_jobs_any()
        params = {
            "id": job_id,
            "fence": fence,
            "now": now,
            "delay": None if retry_delay is None else float(retry_delay),
            "terminal": JobState(terminal).value,
            "dlq": dead_letter_queue,
            "error": error_json(error),
            "jobs_channel": jobs_channel,
            "done_channel": done_channel,
        }
        rows = await self._fetchall("fail", params, STALE)
        if not rows:
            return None
        state = JobState(rows[0][0])
        if retry_delay is None:
            self._wake_done()
        else:
            self._wake_jobs(None)
        return state

    async def release(self, job_id: str, fence: int, now: float | None = None) -> bool:
        params = {"id": job_id, "fence": fence, "channel": self._allow_jobs_any()}
        rows = await self._fetchall("release", params, STALE)
        if rows:
            self._wake_jobs([rows[0][0]])
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
            self._wake_all()
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
        params = {"id": job_id, "entries": [Jsonb(e.to_dict(), dumps) for e in entries]}
        try:
            await self._fetchall("append_logs", params, STALE)
        except StorageUnavailableError:
            raise
        except Exception as exc:  # the job was deleted between the check and the insert
            if not isinstance(exc.__cause__, pg_errors.ForeignKeyViolation):
                raise

    async def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        entry = (frozenset(queues), asyncio.Event())
        self._job_waiters.append(entry)
        try:
            await self._await_listener()
            while True:
                entry[1].clear()
                try:
                    rows = await self._fetchall("wait_probe", {"queues": list(queues)}, READ)
                except StorageUnavailableError:
                    await asyncio.sleep(min(self.settings.poll_interval, deadline - loop.time()))
                    return
                ready, next_due, server_now = rows[0]
                if ready:
                    return
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return
                due_in = None if next_due is None else max(float(next_due) - server_now, 0.0)
                if due_in is not None and due_in <= 0:
                    return
                wait = min(remaining, self.settings.poll_interval)
                if due_in is not None:
                    wait = min(wait, due_in)
                try:
                    await asyncio.wait_for(entry[1].wait(), wait)
                    return  # notified
                except TimeoutError:
                    if wait >= remaining or (due_in is not None and wait >= due_in):
                        return  # timed out, or the next scheduled job is due
        finally:
            self._job_waiters.remove(entry)

    async def wait_for_finish(self, job_id: str, timeout: float) -> JobRecord | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        event = asyncio.Event()
        self._done_waiters.append(event)
        interval = 0.01
        try:
            await self._await_listener()
            while True:
                listening = self._listener is not None and self._listener.connected
                event.clear()
                record = await self.get_job(job_id)
                if record is None or record.state.is_terminal:
                    return record
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return record
                try:
                    await asyncio.wait_for(event.wait(), min(remaining, interval))
                except TimeoutError:
                    pass
                cap = self.settings.poll_interval if listening else 0.25
                interval = min(interval * 2, cap)
        finally:
            self._done_waiters.remove(event)

    # -- operating ------------------------------------------------------------------------
    async def cancel(
        self, job_id: str, reason: str | None = None, now: float | None = None
    ) -> CancelOutcome:
        params = {"id": job_id, "reason": reason, "now": now, "done_channel": self.done_channel}
        rows = await self._fetchall("cancel", params, STALE)
        new_state, seen, _ = rows[0]
        if new_state == JobState.CANCELLED.value:
            self._wake_done()
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
    ) -> list[str]:
        where, params = filter_sql(flt)
        sql = self._sql["retry"].replace("{filter}", where)
        params.update(
            now=now, limit=int(limit), reset=bool(reset_attempts), channel=self.jobs_channel
        )

        async def op(conn: Conn) -> list[tuple[Any, ...]]:
            cur = await conn.execute(sql, params)
            return await cur.fetchall()

        rows = await self._run(op, STALE)
        if rows:
            self._wake_jobs(None)
        return [r[0] for r in rows]

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

    # -- reading --------------------------------------------------------------------------
    async def get_job(self, job_id: str) -> JobRecord | None:
        rows = await self._fetchall("get_job", {"id": job_id}, READ)
        return record_from_row(rows[0]) if rows else None

    async def list_jobs(
        self, flt: JobFilter, *, limit: int = 50, offset: int = 0
    ) -> list[JobRecord]:
        where, params = filter_sql(flt)
        sql = self._sql["list_jobs"].replace("{filter}", where)
        params.update(limit=int(limit), offset=int(offset))

        async def op(conn: Conn) -> list[tuple[Any, ...]]:
            cur = await conn.execute(sql, params)
            return await cur.fetchall()

        return [record_from_row(r) for r in await self._run(op, READ)]

    async def count_jobs(self) -> list[CountRow]:
        rows = await self._fetchall("count_jobs", {}, READ)
        out = [CountRow(q, t, JobState(s), int(n)) for q, t, s, n in rows]
        out.sort(key=lambda c: (c.queue, c.task, c.state))
        return out

    # -- worker registry ------------------------------------------------------------------
    async def register_worker(self, info: WorkerInfo) -> None:
        params = {
            "id": info.id,
            "host": info.host,
            "pid": int(info.pid),
            "started_at": float(info.started_at),
            "heartbeat_at": float(info.heartbeat_at),
            "queues": list(info.queues),
            "concurrency": int(info.concurrency),
            "stats": dumps(info.stats or {}),
        }
        await self._fetchall("register_worker", params, READ)

    async def unregister_worker(self, worker_id: str) -> None:
        await self._fetchall("unregister_worker", {"id": worker_id}, READ)

    async def list_workers(self) -> list[WorkerInfo]:
        rows = await self._fetchall("list_workers", {}, READ)
        return [
            WorkerInfo(
                id=r[0],
                host=r[1],
                pid=r[2],
                started_at=float(r[3]),
                heartbeat_at=float(r[4]),
                queues=tuple(r[5]),
                concurrency=r[6],
                stats=dict(r[7] or {}),
            )
            for r in rows
        ]

    async def prune_workers(self, heartbeat_before: float) -> int:
        async def op(conn: Conn) -> int:
            cur = await conn.execute(
                self._sql["prune_workers"], {"before": float(heartbeat_before)}
            )
            return cur.rowcount

        return await self._run(op, READ)

    # -- diagnostics ----------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters for tests and ``conveyor info``: notifications sent and suppressed."""
        listener = self._listener
        return {
            "notify_sent": self._limiter.sent,
            "notify_suppressed": self._limiter.suppressed,
            "listening": bool(listener and listener.connected),
            "listen_reconnects": listener.reconnects if listener else 0,
            "time": time.time(),
        }
