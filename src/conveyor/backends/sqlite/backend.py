"""The SQLite backend: the embedded default (``sqlite:///path/to/jobs.db``).

One file on one machine, shared safely by several worker processes: WAL mode, every write in
``BEGIN IMMEDIATE``, claims as ``UPDATE ... WHERE rowid IN (SELECT ... ORDER BY ... LIMIT n)
RETURNING``. Each :class:`SQLiteFactory` runs one writer thread (group commit: the writes queued
by all its clients while a transaction runs share the next one) and one reader thread; clients
on any event loop submit to them (see :mod:`conveyor.backends.sqlite.engine`).

Durability: ``durability="process"`` (``synchronous=NORMAL``) survives the crash of any
process; ``"power"`` (``synchronous=FULL``) also survives power loss, at the cost of one fsync
per transaction.

The schema is versioned (``PRAGMA user_version``) and migrated automatically on open; a file
written by a newer Conveyor is refused with :class:`~conveyor.errors.SchemaVersionError`.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from conveyor.backends.base import Backend, BackendFactory, CancelOutcome
from conveyor.backends.capabilities.transactions import SyncTransactions, Transactions
from conveyor.backends.common import redact_url
from conveyor.backends.sqlite import ops, reads, tx
from conveyor.backends.sqlite.browse import SQLiteBrowser
from conveyor.backends.sqlite.defer import SQLiteDefer
from conveyor.backends.sqlite.engine import Engine
from conveyor.backends.sqlite.events import SQLiteEvents, SQLiteEventsFactory  # issue 16
from conveyor.backends.sqlite.kv import SQLiteKV
from conveyor.backends.sqlite.load import SQLiteLoad
from conveyor.backends.sqlite.notify import Effects, Notifier, Waiter
from conveyor.backends.sqlite.queries import (
    Q,
    dumps,
    encode_job,
    glob_pattern,
    log_lines,
    worker_row,
)
from conveyor.backends.sqlite.schema import (
    SCHEMA_VERSION,
    Durability,
    connect,
    migrate,
    path_from_url,
    storage_error,
)
from conveyor.backends.sqlite.streams import SQLiteStreams  # event sourcing (issue 16)
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
    RetriedJobs,
    StoreDeadLetter,
    WorkerInfo,
)
from conveyor.domain.states import JobState
from conveyor.errors import ConfigurationError

__all__ = ["SQLiteBackend", "SQLiteFactory"]


class SQLiteFactory(SQLiteEventsFactory, SyncTransactions, BackendFactory):
    """``sqlite:///path.db``: every client of this factory shares one writer thread.

    ``durability``: ``"process"`` (default; ``synchronous=NORMAL``) or ``"power"``
    (``synchronous=FULL``). ``busy_timeout``: seconds a write waits for another process's
    write transaction before failing.
    """

    def __init__(
        self,
        url: str = "sqlite:///conveyor.db",
        *,
        durability: Durability = "process",
        busy_timeout: float = 5.0,
    ) -> None:
        if durability not in ("process", "power"):
            raise ConfigurationError(f"durability must be 'process' or 'power', not {durability!r}")
        if not isinstance(busy_timeout, int | float) or busy_timeout < 0:
            raise ConfigurationError(
                f"busy_timeout must be a number of seconds >= 0, not {busy_timeout!r}"
            )
        self.url = url
        self.path = path_from_url(url)
        self.durability: Durability = durability
        self.busy_timeout = float(busy_timeout)
        self.notifier = Notifier()
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._users = 0

    def create(self) -> SQLiteBackend:
        return SQLiteBackend(self)

    # -- the shared engine ------------------------------------------------------------------
    async def engine(self) -> Engine:
        """The running engine (started on first use, or again after a failed start)."""
        engine = self._engine
        if engine is not None and engine.ready and not engine.closed and engine.pid == os.getpid():
            return engine
        if engine is None or engine.pid != os.getpid() or engine.failed or engine.closed:
            with self._lock:
                engine = self._engine
                if engine is None or engine.pid != os.getpid() or engine.failed or engine.closed:
                    if engine is not None and engine.pid != os.getpid():
                        # Inherited across fork: never touch its connections or waiters.
                        self._users = 0
                        self.notifier = Notifier()
                    engine = Engine(self.path, self.durability, self.busy_timeout, self.notifier)
                    engine.start()
                    self._engine = engine
        if not engine.started.done():
            await asyncio.wrap_future(engine.started)
        elif engine.failed:
            engine.started.result()  # raises the start-up error
        return engine

    async def acquire(self) -> Engine:
        """Count one more open client and return the engine."""
        engine = await self.engine()
        with self._lock:
            self._users += 1
        return engine

    async def release(self) -> None:
        """Count one client less; the last one stops the threads and closes the files."""
        with self._lock:
            self._users = max(self._users - 1, 0)
            if self._users or self._engine is None:
                return
            engine, self._engine = self._engine, None
        await _stop(engine)

    # -- hooks ------------------------------------------------------------------------------
    async def migrate(self) -> list[str]:
        return await asyncio.to_thread(self._migrate_now)

    def _migrate_now(self) -> list[str]:
        conn = connect(self.path, durability=self.durability, busy_timeout=self.busy_timeout)
        try:
            return migrate(conn, self.path)
        except sqlite3.Error as exc:
            raise storage_error(exc, self.path, self.busy_timeout) from exc
        finally:
            conn.close()

    async def reset(self) -> list[str]:
        """Empty every Conveyor table in place (one transaction): other processes that hold
        the file open keep working on the emptied store."""
        return await asyncio.to_thread(self._reset_now)

    def _reset_now(self) -> list[str]:
        conn = connect(self.path, durability=self.durability, busy_timeout=self.busy_timeout)
        try:
            applied = migrate(conn, self.path)
            conn.execute("BEGIN IMMEDIATE")
            try:
                tables = [
                    row[0]
                    for row in conn.execute(
                        "SELECT name FROM sqlite_master WHERE type = 'table' "
                        "AND name LIKE 'conveyor\\_%' ESCAPE '\\'"
                    ).fetchall()
                ]
                for table in tables:
                    conn.execute(f'DELETE FROM "{table}"')
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return applied
        except sqlite3.Error as exc:
            raise storage_error(exc, self.path, self.busy_timeout) from exc
        finally:
            conn.close()

    async def destroy(self) -> None:
        """Stop the threads and delete the database file with its ``-wal`` and ``-shm``."""
        with self._lock:
            engine, self._engine = self._engine, None
            self._users = 0
        if engine is not None and engine.pid == os.getpid():
            await _stop(engine)
        for suffix in ("", "-wal", "-shm", "-journal"):
            try:
                os.remove(self.path + suffix)
            except FileNotFoundError:
                pass

    # -- the outbox pattern: the application's own connection and transaction ---------------
    def enqueue_on_sync(
        self, conn: sqlite3.Connection, jobs: Sequence[NewJob], now: float | None = None
    ) -> list[EnqueueResult]:
        """Enqueue inside the open transaction of the application's ``sqlite3`` connection to
        this file; the jobs exist if and only if it commits."""
        return tx.enqueue_on_sync(conn, self.path, jobs, now)

    def complete_on_sync(
        self,
        conn: sqlite3.Connection,
        job_id: str,
        fence: int,
        result: bytes | None,
        now: float | None = None,
    ) -> bool:
        """Fenced completion inside the application's open transaction on ``conn``."""
        return tx.complete_on_sync(conn, self.path, job_id, fence, result, now)

    def describe(self) -> dict[str, Any]:
        return {
            "url": redact_url(self.url),
            "backend": "sqlite",
            "path": self.path,
            "durability": self.durability,
            "busy_timeout": self.busy_timeout,
            "sqlite_version": sqlite3.sqlite_version,
            "schema_version": SCHEMA_VERSION,
        }


def _begin(path: str, durability: Durability, busy_timeout: float) -> sqlite3.Connection:
    conn = connect(path, durability=durability, busy_timeout=busy_timeout)
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        conn.close()
        raise storage_error(exc, path, busy_timeout) from exc
    return conn


def _finish(conn: sqlite3.Connection, commit: bool) -> None:
    try:
        if conn.in_transaction:
            conn.execute("COMMIT" if commit else "ROLLBACK")
    finally:
        conn.close()


async def _stop(engine: Engine) -> None:
    """Stop the engine and wait until its threads closed their connections (a start still in
    progress finishes first, then stops)."""
    engine.stop()
    await asyncio.wrap_future(engine.stopped)


class SQLiteBackend(  # Defers: issue 19; events, streams: issue 16
    SQLiteDefer,
    SQLiteEvents,
    SQLiteStreams,
    SQLiteBrowser,
    SQLiteKV,
    SQLiteLoad,
    Transactions,
    Backend,
):
    """One client of a :class:`SQLiteFactory`; usable from any event loop."""

    factory: SQLiteFactory

    def __init__(self, factory: SQLiteFactory) -> None:
        self.factory = factory
        self._open = False

    async def open(self) -> None:
        if not self._open:
            await self.factory.acquire()
            self._open = True

    async def close(self) -> None:
        if self._open:
            self._open = False
            await self.factory.release()

    # -- producer -----------------------------------------------------------------------------
    async def enqueue(
        self, jobs: Sequence[NewJob], now: float | None = None
    ) -> list[EnqueueResult]:
        if not jobs:
            return []
        batch = list(jobs)
        encoded = [encode_job(job) for job in batch]
        engine = await self.factory.engine()
        write = engine.write_small if len(batch) == 1 else engine.write
        return await write(lambda conn, fx: ops.enqueue(conn, fx, batch, encoded, now))

    async def enqueue_on(
        self, conn: sqlite3.Connection, jobs: Sequence[NewJob], now: float | None = None
    ) -> list[EnqueueResult]:
        """Enqueue inside the open transaction of the application's connection (the outbox
        pattern). Runs on the calling thread: a ``sqlite3`` connection belongs to its thread."""
        return self.factory.enqueue_on_sync(conn, jobs, now)

    async def complete_on(
        self,
        conn: sqlite3.Connection,
        job_id: str,
        fence: int,
        result: bytes | None,
        now: float | None = None,
    ) -> bool:
        """Fenced completion inside the application's open transaction on ``conn``."""
        return self.factory.complete_on_sync(conn, job_id, fence, result, now)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[sqlite3.Connection]:
        """A new connection to the queue's file with ``BEGIN IMMEDIATE`` done, for a handler's
        own writes (``current_job().transaction()``); committed when the block exits normally,
        rolled back when it raises. It holds the file's write lock until then: keep it short
        (every other writer waits for it, this worker's heartbeats included)."""
        factory = self.factory
        conn = await asyncio.to_thread(
            _begin, factory.path, factory.durability, factory.busy_timeout
        )
        try:
            yield conn
        except BaseException:
            await asyncio.shield(asyncio.to_thread(_finish, conn, False))
            raise
        await asyncio.shield(asyncio.to_thread(_finish, conn, True))

    async def append_logs_on(
        self, conn: sqlite3.Connection, job_id: str, entries: Sequence[LogEntry]
    ) -> None:
        """Log lines inside the application's open transaction on ``conn``."""
        if entries:
            tx.append_logs_on_sync(conn, self.factory.path, job_id, log_lines(list(entries)))

    # -- worker -------------------------------------------------------------------------------
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
        names = list(queues)
        patterns = None if tasks is None else [glob_pattern(p) for p in tasks]
        exclude = list(exclude_tasks)
        dead: list[StoreDeadLetter] = []
        engine = await self.factory.engine()
        jobs = await engine.write(
            lambda conn, fx: ops.claim(
                conn, fx, worker_id, names, limit, lease, now, patterns, exclude, dead
            )
        )
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
        """:meth:`complete` then :meth:`claim` in one write transaction (one hand-off to the
        writer thread instead of two). A claim that fails leaves the completion standing and
        claims nothing; the worker's own next claim meets the error."""
        names = list(queues)
        patterns = None if tasks is None else [glob_pattern(p) for p in tasks]
        exclude = list(exclude_tasks)
        dead: list[StoreDeadLetter] = []

        def fused(conn: sqlite3.Connection, fx: Effects) -> tuple[bool, list[ClaimedJob]]:
            done = ops.complete(conn, fx, job_id, fence, result, now)
            if limit <= 0:
                return done, []
            conn.execute("SAVEPOINT fused_claim")
            try:
                jobs = ops.claim(
                    conn, fx, worker_id, names, limit, lease, now, patterns, exclude, dead
                )
            except Exception:  # noqa: BLE001 - the completion stands either way
                conn.execute("ROLLBACK TO fused_claim")
                jobs = []
                dead.clear()
            conn.execute("RELEASE fused_claim")
            return done, jobs

        engine = await self.factory.engine()
        outcome = await engine.write_small(fused)  # one job at a time: inline when it can be
        self.note_store_dead_letters(dead)
        return outcome

    async def complete(
        self, job_id: str, fence: int, result: bytes | None, now: float | None = None
    ) -> bool:
        engine = await self.factory.engine()
        return await engine.write(
            lambda conn, fx: ops.complete(conn, fx, job_id, fence, result, now)
        )

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
        engine = await self.factory.engine()
        return await engine.write(
            lambda conn, fx: ops.fail(
                conn, fx, job_id, fence, error, retry_delay, now, terminal, dead_letter_queue
            )
        )

    async def release(self, job_id: str, fence: int, now: float | None = None) -> bool:
        engine = await self.factory.engine()
        return await engine.write(lambda conn, fx: ops.release(conn, fx, job_id, fence))

    async def heartbeat(
        self,
        worker_id: str,
        leases: Sequence[tuple[str, int]],
        lease: float,
        now: float | None = None,
    ) -> list[LeaseStatus]:
        if not leases:
            return []
        held = list(leases)
        engine = await self.factory.engine()
        return await engine.write(lambda conn, fx: ops.heartbeat(conn, fx, held, lease, now))

    async def recover_expired(
        self, max_stalls: int, now: float | None = None, limit: int = 1000
    ) -> list[RecoveredJob]:
        if limit <= 0:
            return []
        engine = await self.factory.engine()
        return await engine.write(
            lambda conn, fx: ops.recover_expired(conn, fx, max_stalls, now, limit)
        )

    async def set_progress(
        self, job_id: str, fence: int, progress: bytes, now: float | None = None
    ) -> bool:
        engine = await self.factory.engine()
        return await engine.write(
            lambda conn, fx: ops.set_progress(conn, fx, job_id, fence, progress)
        )

    async def append_logs(self, job_id: str, entries: Sequence[LogEntry]) -> None:
        if not entries:
            return
        lines = log_lines(list(entries))
        engine = await self.factory.engine()
        await engine.write(lambda conn, fx: ops.append_logs(conn, fx, job_id, lines))

    async def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:
        engine = await self.factory.engine()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        names = dumps(list(queues))
        waiter = Waiter(loop, frozenset(queues))
        self.factory.notifier.add_job_waiter(waiter)
        try:
            while True:
                waiter.reset()
                ready, next_due = await engine.read(lambda conn: reads.waiting(conn, names))
                if ready:
                    return
                remaining = deadline - loop.time()
                if next_due is not None:
                    remaining = min(remaining, next_due - time.time())
                if remaining <= 0:
                    return
                try:
                    await asyncio.wait_for(waiter.event.wait(), remaining)
                except TimeoutError:
                    return
                if waiter.ready:
                    return
        finally:
            self.factory.notifier.remove_job_waiter(waiter)

    async def wait_for_finish(self, job_id: str, timeout: float) -> JobRecord | None:
        await self.factory.engine()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        waiter = Waiter(loop, frozenset())
        self.factory.notifier.add_finish_waiter(job_id, waiter)
        try:
            while True:
                waiter.reset()
                record = await self.get_job(job_id)
                if record is None or record.state.is_terminal:
                    return record
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return record
                try:
                    await asyncio.wait_for(waiter.event.wait(), remaining)
                except TimeoutError:
                    pass
        finally:
            self.factory.notifier.remove_finish_waiter(job_id, waiter)

    # -- operating ------------------------------------------------------------------------------
    async def cancel(
        self, job_id: str, reason: str | None = None, now: float | None = None
    ) -> CancelOutcome:
        engine = await self.factory.engine()
        return await engine.write(lambda conn, fx: ops.cancel(conn, fx, job_id, reason, now))

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
        engine = await self.factory.engine()
        return await engine.write(
            lambda conn, fx: ops.retry_jobs(conn, fx, flt, reset_attempts, now, limit)
        )

    async def delete_jobs(self, flt: JobFilter, *, limit: int = 1000) -> int:
        if limit <= 0:
            return 0
        engine = await self.factory.engine()
        return await engine.write(lambda conn, fx: ops.delete_jobs(conn, fx, flt, limit))

    # -- reading --------------------------------------------------------------------------------
    async def get_job(self, job_id: str) -> JobRecord | None:
        engine = await self.factory.engine()
        return await engine.read(lambda conn: reads.get_job(conn, job_id))

    async def list_jobs(
        self, flt: JobFilter, *, limit: int = 50, offset: int = 0
    ) -> list[JobRecord]:
        if limit <= 0:
            return []
        engine = await self.factory.engine()
        return await engine.read(lambda conn: reads.list_jobs(conn, flt, limit, max(offset, 0)))

    async def list_summaries(
        self, flt: JobFilter, *, limit: int = 50, offset: int = 0
    ) -> list[JobRecord]:
        if limit <= 0:
            return []
        engine = await self.factory.engine()
        return await engine.read(
            lambda conn: reads.list_jobs(conn, flt, limit, max(offset, 0), summary=True)
        )

    async def count_jobs(self) -> list[CountRow]:
        engine = await self.factory.engine()
        return await engine.read(reads.count_jobs)

    # -- workers --------------------------------------------------------------------------------
    async def register_worker(self, info: WorkerInfo) -> None:
        row = worker_row(info)
        engine = await self.factory.engine()
        await engine.write(lambda conn, fx: ops.execute(conn, fx, Q["register_worker"], row))

    async def unregister_worker(self, worker_id: str) -> None:
        engine = await self.factory.engine()
        await engine.write(
            lambda conn, fx: ops.execute(conn, fx, Q["unregister_worker"], (worker_id,))
        )

    async def list_workers(self) -> list[WorkerInfo]:
        engine = await self.factory.engine()
        return await engine.read(reads.list_workers)

    async def prune_workers(self, heartbeat_before: float) -> int:
        engine = await self.factory.engine()
        return await engine.write(
            lambda conn, fx: ops.execute(conn, fx, Q["prune_workers"], (heartbeat_before,))
        )
