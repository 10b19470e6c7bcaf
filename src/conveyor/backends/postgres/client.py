"""The plumbing of a PostgreSQL backend client: pool, errors and retries, wake-ups, and the
read side (jobs, counts, the worker registry).

One client belongs to one event loop. It holds an ``AsyncConnectionPool`` of autocommit
connections and, once something waits, one LISTEN connection. The transitions live in
:mod:`conveyor.backends.postgres.backend`; the SQL in ``postgres/sql/queries.sql``.

Faults: a psycopg error never escapes. Reads, heartbeats and progress writes are retried a
couple of times when the connection or server went away; other writes are retried only when
the server said it was closing the connection before running them (or, for enqueue and
complete, when a retry is provably safe), and otherwise raise
:class:`~conveyor.errors.StorageUnavailableError`: the lease then decides what happens to the
job, which is never lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import AsyncConnectionPool

from conveyor.backends.postgres import pooling
from conveyor.backends.postgres import schema as schema_ops
from conveyor.backends.postgres.errors import describe_connect_error, is_transient, translate
from conveyor.backends.postgres.statements import (
    channels,
    filter_sql,
    queries,
    record_from_row,
)
from conveyor.backends.postgres.wake import Wakeups
from conveyor.domain.job import (
    CountRow,
    JobFilter,
    JobRecord,
    WorkerInfo,
)
from conveyor.domain.states import JobState
from conveyor.errors import StorageUnavailableError

if TYPE_CHECKING:
    from conveyor.backends.postgres.settings import PostgresSettings

T = TypeVar("T")
Conn = psycopg.AsyncConnection[Any]
log = logging.getLogger("conveyor.backends.postgres")

READ = "read"  # idempotent: retry on any connection failure
STALE = "stale"  # retry only when the server closed the connection before running it
RETRY_DELAYS = (0.05, 0.25)


class NoReply(Exception):
    """The server did not answer within the command deadline."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds


def _sever(conn: Conn) -> None:
    """Shut the connection's socket down (both directions) without closing its descriptor."""
    try:
        fd = conn.pgconn.socket
    except psycopg.OperationalError:
        return
    sock = socket.socket(fileno=os.dup(fd))
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


def statement_lost(exc: BaseException) -> bool:
    """A server-side prepared statement was not there (or was already there): the symptom of
    a transaction pooler handing out server sessions (see :mod:`.pooling`)."""
    if isinstance(exc, pg_errors.InvalidSqlStatementName | pg_errors.DuplicatePreparedStatement):
        return True
    # Another client's statement under the same name: the parameters do not fit.
    return isinstance(exc, pg_errors.ProtocolViolation) and "prepared statement" in str(exc)


def _stale(exc: BaseException) -> bool:
    """The server announced it was closing the connection (restart, crash recovery,
    terminate): the statement did not run."""
    return isinstance(
        exc, pg_errors.AdminShutdown | pg_errors.CrashShutdown | pg_errors.CannotConnectNow
    )


class PostgresClient:
    """Connections, retries, wake-ups and reads for one schema; see :class:`PostgresBackend`."""

    def __init__(self, settings: PostgresSettings) -> None:
        self.settings = settings
        self.schema = settings.schema
        self._sql = queries(settings.schema)
        self.jobs_channel, self.done_channel = channels(settings.schema)
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._checks: set[asyncio.Task[Any]] = set()
        self._conninfo = settings.url
        self._last_reset = 0.0
        #: Whether a transaction pooler serves the URL (known once the client is open).
        self.pooled: bool | None = settings.pooled
        self.wake = Wakeups(
            self.jobs_channel,
            self.done_channel,
            self._send_notify,
            listen=settings.listen,
            poll_interval=settings.poll_interval,
            notify_interval=settings.notify_interval,
            connect_timeout=settings.timeout,
            probe_timeout=settings.listen_probe_timeout,
        )

    @property
    def prepare_threshold(self) -> int | None:
        """psycopg's ``prepare_threshold`` for pooled connections: ``None`` (never prepare)
        behind a transaction pooler."""
        return None if self.pooled else self.settings.prepare_threshold

    # -- lifecycle ------------------------------------------------------------------------
    async def open(self) -> None:
        if self._pool is not None:
            return
        s = self.settings
        try:
            conninfo = s.conninfo()
            conn = await psycopg.AsyncConnection.connect(
                conninfo,
                autocommit=True,
                prepare_threshold=None,
                connect_timeout=max(1, int(s.timeout)),
            )
        except psycopg.Error as exc:
            raise StorageUnavailableError(describe_connect_error(exc, s.url)) from None
        try:
            version = await schema_ops.current_version(conn, s.schema)
            if s.auto_migrate and version != schema_ops.latest_version():
                await schema_ops.migrate(conn, s.schema)
                version = await schema_ops.current_version(conn, s.schema)
            schema_ops.check_version(version, s.schema)
            pooled = s.pooled
            if pooled is None:
                pooled = await pooling.shares_sessions(conn, conninfo, s.timeout)
        except psycopg.Error as exc:
            raise translate(exc, s.url, s.schema) from exc
        finally:
            await conn.close()
        self.pooled = pooled
        pooling.report(s, pooled, detected=s.pooled is None)
        self._conninfo = conninfo
        self._pool = await self._new_pool()
        self.wake.enable(pooling.listen_conninfo(s, pooled), s.listen_target)

    async def _new_pool(self) -> AsyncConnectionPool[Conn]:
        s = self.settings
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            self._conninfo,
            min_size=s.pool_min,
            max_size=s.pool_max,
            open=False,
            kwargs={"autocommit": True, "prepare_threshold": self.prepare_threshold},
            timeout=s.timeout,
            name=f"conveyor:{s.schema}",
        )
        await pool.open(wait=False)
        return pool

    async def close(self) -> None:
        await self.wake.close()
        for task in list(self._checks):
            task.cancel()
        if self._checks:
            await asyncio.gather(*self._checks, return_exceptions=True)
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

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
        """Run ``op`` on a pooled connection within the command deadline, mapping errors and
        retrying per ``retry``."""
        attempt = 0
        while True:
            pool = self._pool_or_fail()
            try:
                return await self._attempt(pool, op)
            except NoReply as exc:
                self._reset_connections(pool)
                if retry == READ and attempt < len(RETRY_DELAYS):
                    await asyncio.sleep(RETRY_DELAYS[attempt])
                    attempt += 1
                    continue
                raise self._no_reply_error(exc.seconds) from None
            except psycopg.Error as exc:
                if statement_lost(exc) and await self.found_pooler(pool, exc):
                    continue  # the statement did not run; again without preparing
                if is_transient(exc):
                    self._purge_stale(pool)
                    again = retry == READ or (retry == STALE and _stale(exc))
                    if again and attempt < len(RETRY_DELAYS):
                        await asyncio.sleep(RETRY_DELAYS[attempt])
                        attempt += 1
                        continue
                raise translate(exc, self.settings.url, self.schema) from exc

    async def _attempt(
        self,
        pool: AsyncConnectionPool[Conn],
        op: Callable[[Conn], Awaitable[T]],
        deadline: float | None = None,
    ) -> T:
        """``op`` on one pooled connection; :class:`NoReply` (and the connection closed) when
        the server does not answer within the deadline (``command_timeout`` by default)."""
        limit = deadline if deadline is not None else self.settings.command_timeout
        async with pool.connection() as conn:
            if limit is None:
                return await op(conn)
            # A timer, not a task and a wait: this runs once per statement. Cancelling would
            # make psycopg ask the server to cancel and wait for an answer that cannot come;
            # shutting the socket down ends the operation at once instead, and leaves the
            # connection broken so the pool discards it.
            expired: list[bool] = []

            def expire() -> None:
                expired.append(True)
                _sever(conn)

            timer = asyncio.get_running_loop().call_later(limit, expire)
            try:
                return await op(conn)
            except Exception:
                if expired:
                    raise NoReply(limit) from None
                raise
            finally:
                timer.cancel()

    async def found_pooler(self, pool: AsyncConnectionPool[Conn], exc: psycopg.Error) -> bool:
        """A prepared statement vanished or collided: a transaction pooler serves the URL
        although the start-up check did not see it (it can miss behind a busy pool). From now
        on prepare nothing (a fresh pool) and do not LISTEN through it; whether the caller
        should retry (the failed statement did not run)."""
        if self.pooled:
            return False
        self.pooled = True
        s = self.settings
        log.warning(
            "PostgreSQL at %s answered %r: a transaction pooler (PgBouncer pool_mode = "
            "transaction) serves this URL although the start-up check did not see it; "
            "server-side prepared statements are off from now on (pass pooled=True to say so "
            "up front)",
            s.url_target,
            str(exc).strip(),
        )
        fresh = await self._new_pool()
        if self._pool is pool:
            self._pool = fresh
            self._background(pool.close(timeout=1.0))
        else:
            await fresh.close()
        self.wake.enable(pooling.listen_conninfo(s, True), s.listen_target)
        await self.wake.reconnect()
        return True

    def _no_reply_error(self, seconds: float) -> StorageUnavailableError:
        return StorageUnavailableError(
            f"PostgreSQL at {self.settings.url_target} did not answer within {seconds:g}s "
            "(server or network stalled); the connection was dropped and the call may have "
            "taken effect"
        )

    def _reset_connections(self, pool: AsyncConnectionPool[Conn]) -> None:
        """A connection went silent (no reply, no error): assume every connection opened
        before is dead the same way. Swap in a fresh pool, close the old one in the
        background and reconnect LISTEN."""
        if pool is not self._pool or time.monotonic() - self._last_reset < 1.0:
            return
        self._last_reset = time.monotonic()

        async def swap() -> None:
            fresh = await self._new_pool()
            if self._pool is not pool:  # closed or swapped meanwhile
                await fresh.close()
                return
            self._pool = fresh
            await self.wake.reconnect()
            await pool.close(timeout=1.0)

        self._background(swap())

    def _purge_stale(self, pool: AsyncConnectionPool[Conn]) -> None:
        """After a connection failure, test the idle connections in the background so the
        next calls do not pick up ones the server already closed."""
        if self._checks:
            return
        limit = self.settings.command_timeout
        self._background(asyncio.wait_for(pool.check(), limit) if limit else pool.check())

    def _background(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._checks.add(task)
        task.add_done_callback(self._check_done)

    def _check_done(self, task: asyncio.Task[Any]) -> None:
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

    # -- reading --------------------------------------------------------------------------
    async def get_job(self, job_id: str) -> JobRecord | None:
        rows = await self._fetchall("get_job", {"id": job_id}, READ)
        return record_from_row(rows[0]) if rows else None

    async def list_jobs(
        self, flt: JobFilter, *, limit: int = 50, offset: int = 0
    ) -> list[JobRecord]:
        return await self._list("list_jobs", flt, limit, offset)

    async def list_summaries(
        self, flt: JobFilter, *, limit: int = 50, offset: int = 0
    ) -> list[JobRecord]:
        return await self._list("list_summaries", flt, limit, offset)

    async def _list(self, name: str, flt: JobFilter, limit: int, offset: int) -> list[JobRecord]:
        where, params = filter_sql(flt)
        sql = self._sql[name].replace("{filter}", where)
        # Negative values select nothing / start at the beginning (no SQL error).
        params.update(limit=max(int(limit), 0), offset=max(int(offset), 0))

        async def op(conn: Conn) -> list[tuple[Any, ...]]:
            cur = await conn.execute(sql, params)
            return await cur.fetchall()

        summary = name == "list_summaries"
        return [record_from_row(r, summary=summary) for r in await self._run(op, READ)]

    async def count_jobs(self) -> list[CountRow]:
        """Counts by queue, task and state; a stored state that is not a job state (a damaged
        row) counts as ``unknown``."""
        merged: dict[tuple[str, str, JobState], int] = {}
        for q, t, s, n in await self._fetchall("count_jobs", {}, READ):
            try:
                state = JobState(s)
            except ValueError:
                state = JobState.UNKNOWN
            merged[(q, t, state)] = merged.get((q, t, state), 0) + int(n)
        return [CountRow(q, t, s, n) for (q, t, s), n in sorted(merged.items())]

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
            "stats": json.dumps(info.stats or {}),
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
                stats=dict(r[7]) if isinstance(r[7], dict) else {},
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
        """Counters for tests and diagnostics: notifications, LISTEN state, batching."""
        return {
            **self.wake.stats(),
            "pooled": self.pooled,
            "prepare_threshold": self.prepare_threshold,
        }
