"""The threads behind one SQLite factory.

sqlite3 blocks, so each factory runs its database work in two dedicated threads:

* the **writer** owns the one write connection. It takes every write request queued since its
  last transaction and runs them in one ``BEGIN IMMEDIATE`` transaction (group commit in user
  space), in submission order; if one of them fails, the transaction is rolled back and each
  request is run again in a transaction of its own, so one bad request never takes others
  down. Waiters are woken after the commit.
* the **reader** owns a read connection (WAL readers never block the writer) and, while
  anyone waits for jobs, polls ``PRAGMA data_version`` to notice commits by other processes:
  every 2 ms after activity, backing off to 50 ms when nothing changes.

Requests come from coroutines on any event loop; results go back through
``loop.call_soon_threadsafe``, one call per loop per batch.

A hand-off to the writer and back costs two thread wake-ups, several times the work of a
one-job transaction. So a caller that makes one small write at a time (a single enqueue, the
worker's fused complete-and-claim at concurrency 1) may ask for it **inline**: when the writer
is idle and the database's write lock can be taken at once, the transaction runs right there
on the caller's thread, on the writer's connection (the two take turns under one mutex);
otherwise (the writer is busy, another process holds the lock, or the commit would have to
wait for an ``fsync`` under ``durability="power"``) it goes to the writer as usual. Inline work
never waits on a lock, so it never stalls the caller's event loop for longer than the write.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from conveyor.backends.sqlite.notify import Effects, Notifier
from conveyor.backends.sqlite.schema import (
    Durability,
    check_writable,
    connect,
    migrate,
    storage_error,
)
from conveyor.errors import BackendError

T = TypeVar("T")

WriteOp = Callable[[sqlite3.Connection, Effects], T]
ReadOp = Callable[[sqlite3.Connection], T]

MAX_BATCH = 512
POLL_MIN = 0.002
POLL_MAX = 0.05

_STOP = object()
_KICK = object()
_CHECKPOINT = object()
#: Committed requests between two WAL checkpoints (a one-job write dirties a handful of pages;
#: SQLite's own automatic checkpoint comes every 1000 pages).
CHECKPOINT_EVERY = 200


class _Request:
    __slots__ = ("fn", "future", "loop")

    def __init__(
        self, fn: Callable[..., Any], loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]
    ) -> None:
        self.fn = fn
        self.loop = loop
        self.future = future


def _settle(items: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in items:
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


def _deliver(results: list[tuple[_Request, bool, Any]]) -> None:
    """Hand results back to their loops, one ``call_soon_threadsafe`` per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
    for request, ok, value in results:
        by_loop.setdefault(request.loop, []).append((request.future, ok, value))
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, items)
        except RuntimeError:  # the loop was closed while the request ran
            pass


class Engine:
    """The writer and reader threads and their connections for one database file."""

    def __init__(
        self, path: str, durability: Durability, busy_timeout: float, notifier: Notifier
    ) -> None:
        self.path = path
        self.durability: Durability = durability
        self.busy_timeout = busy_timeout
        self.notifier = notifier
        self.pid = os.getpid()
        self.started: concurrent.futures.Future[list[str]] = concurrent.futures.Future()
        self.stopped: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._writes: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._reads: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._reader: threading.Thread | None = None
        self._submit = threading.Lock()
        #: Held by whoever uses the write connection: the writer for a batch, or an inline write.
        self._conn_lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        #: Inline writes are only worth it when a commit does not wait for an fsync.
        self.inline = durability != "power"
        #: How many writes ran inline (for tests and diagnostics).
        self.inline_writes = 0
        #: How many WAL checkpoints the writer ran (for tests and diagnostics).
        self.checkpoints = 0
        self._commits = 0
        self._checkpoint_asked = False
        #: True once the database is open and migrated (a cheap check for the hot path).
        self.ready = False
        #: How many times the reader polled ``data_version`` (for tests and diagnostics).
        self.polls = 0
        self._closed = False
        self._writer = threading.Thread(
            target=self._run_writer, name=f"conveyor-sqlite-writer:{path}", daemon=True
        )
        notifier.set_kick(self._kick)

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the threads; :attr:`started` resolves once the database is open and migrated."""
        self._writer.start()

    @property
    def failed(self) -> bool:
        """True when opening the database failed (the engine must be replaced)."""
        return self.started.done() and self.started.exception() is not None

    @property
    def closed(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._closed

    def stop(self) -> None:
        """Ask both threads to finish the queued requests and close their connections."""
        with self._submit:
            if self._closed:
                return
            self._closed = True
            self._writes.put(_STOP)

    def _put(self, target: queue.SimpleQueue[Any], request: _Request) -> None:
        with self._submit:
            if self._closed:
                raise BackendError(f"the SQLite backend for {self.path} is closed")
            target.put(request)

    def _kick(self) -> None:
        self._reads.put(_KICK)

    # -- submitting ---------------------------------------------------------------------------
    async def write(self, fn: WriteOp[T]) -> T:
        """Run ``fn(conn, effects)`` inside a write transaction; its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._put(self._writes, _Request(fn, loop, future))
        return await future

    async def write_small(self, fn: WriteOp[T]) -> T:
        """:meth:`write` for one small write: run inline when that needs no waiting (see the
        module docstring), else handed to the writer."""
        done, value = self._try_inline(fn)
        if done:
            return cast(T, value)
        return await self.write(fn)

    def _try_inline(self, fn: WriteOp[T]) -> tuple[bool, T | None]:
        conn = self._conn
        if (
            conn is None
            or not self.inline
            or self._closed
            or not self._writes.empty()
            or not self._conn_lock.acquire(blocking=False)
        ):
            return False, None
        try:
            if self._conn is not conn or self._closed:
                return False, None
            fx = Effects()
            try:
                if not self._begin_at_once(conn):
                    return False, None  # another process writes: queue behind it on the writer
                value = fn(conn, fx)
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                mapped = self._mapped(exc)
                if mapped is exc:
                    raise
                raise mapped from exc
            self.inline_writes += 1
            self._committed(1, inline=True)
        finally:
            self._conn_lock.release()
        if fx:
            self.notifier.dispatch(fx)
        return True, value

    def _begin_at_once(self, conn: sqlite3.Connection) -> bool:
        """``BEGIN IMMEDIATE`` without waiting for the lock; False if it cannot be had now
        (or anything else goes wrong: the writer thread then meets and reports it)."""
        try:
            conn.execute("PRAGMA busy_timeout = 0")
            try:
                conn.execute("BEGIN IMMEDIATE")
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000):d}")
        except sqlite3.Error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return False
        return True

    def _committed(self, requests: int, *, inline: bool) -> None:
        """Count committed requests; every CHECKPOINT_EVERY of them the writer thread runs a
        WAL checkpoint (the write connection's automatic one is off: it would run inside
        whichever commit crossed the threshold, an inline one included, and fsync there)."""
        self._commits += requests
        if self._commits < CHECKPOINT_EVERY or self._checkpoint_asked:
            return
        self._checkpoint_asked = True
        if inline:
            self._writes.put(_CHECKPOINT)

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        with self._conn_lock:
            self._commits = 0
            self._checkpoint_asked = False
            try:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error:
                pass  # a busy or failing checkpoint is retried after the next CHECKPOINT_EVERY
        self.checkpoints += 1

    async def read(self, fn: ReadOp[T]) -> T:
        """Run ``fn(conn)`` on the read connection; its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._put(self._reads, _Request(fn, loop, future))
        return await future

    # -- the writer thread ----------------------------------------------------------------------
    def _run_writer(self) -> None:
        try:
            conn = connect(self.path, durability=self.durability, busy_timeout=self.busy_timeout)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
            self._failed_start(exc)
            return
        try:
            applied = migrate(conn, self.path)
            check_writable(conn)
            conn.execute("PRAGMA wal_autocheckpoint = 0")  # the writer checkpoints (_committed)
            reader = connect(self.path, durability=self.durability, busy_timeout=self.busy_timeout)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
            conn.close()
            self._failed_start(self._mapped(exc))
            return
        self._reader = threading.Thread(
            target=self._run_reader,
            args=(reader,),
            name=f"conveyor-sqlite-reader:{self.path}",
            daemon=True,
        )
        self._reader.start()
        self._conn = conn
        self.ready = True
        self.started.set_result(applied)
        try:
            self._writer_loop(conn)
        finally:
            with self._conn_lock:
                self._conn = None
            self._reads.put(_STOP)
            self._reader.join()
            conn.close()
            self.stopped.set_result(None)

    def _failed_start(self, exc: BaseException) -> None:
        with self._submit:
            self._closed = True
        self.started.set_exception(exc)
        pending: list[tuple[_Request, bool, Any]] = []
        for source in (self._writes, self._reads):
            while True:
                try:
                    item = source.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, _Request):
                    pending.append((item, False, exc))
        _deliver(pending)
        self.stopped.set_result(None)

    def _writer_loop(self, conn: sqlite3.Connection) -> None:
        writes = self._writes
        while True:
            item = writes.get()
            if item is _STOP:
                return
            if item is _CHECKPOINT:
                self._checkpoint(conn)
                continue
            batch = [item]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    item = writes.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                if item is not _CHECKPOINT:  # a checkpoint asked for comes after this batch
                    batch.append(item)
            self._run_batch(conn, batch)
            if self._checkpoint_asked:
                self._checkpoint(conn)
            if stop:
                return

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Request]) -> None:
        # The connection is released before anyone is woken, so a caller that goes on to a
        # write of its own finds it free (see write_small).
        with self._conn_lock:
            results, effects = self._transact(conn, batch)
            self._committed(len(batch), inline=False)
        for fx in effects:
            self.notifier.dispatch(fx)
        _deliver(results)

    def _transact(
        self, conn: sqlite3.Connection, batch: list[_Request]
    ) -> tuple[list[tuple[_Request, bool, Any]], list[Effects]]:
        """Run ``batch`` in one transaction; if it fails, each request in one of its own."""
        fx = Effects()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
            return [(request, False, self._mapped(exc)) for request in batch], []
        values: list[Any] = []
        try:
            for request in batch:
                values.append(request.fn(conn, fx))
            conn.execute("COMMIT")
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            if len(batch) == 1:
                return [(batch[0], False, self._mapped(exc))], []
            results: list[tuple[_Request, bool, Any]] = []
            effects: list[Effects] = []
            for request in batch:
                one, fxs = self._transact(conn, [request])
                results += one
                effects += fxs
            return results, effects
        results = [(request, True, value) for request, value in zip(batch, values, strict=True)]
        return results, [fx] if fx else []

    def _mapped(self, exc: BaseException) -> BaseException:
        if isinstance(exc, sqlite3.Error):
            error = storage_error(exc, self.path, self.busy_timeout)
            error.__cause__ = exc
            return error
        return exc

    # -- the reader thread ----------------------------------------------------------------------
    def _run_reader(self, conn: sqlite3.Connection) -> None:
        try:
            self._reader_loop(conn)
        finally:
            conn.close()

    def _reader_loop(self, conn: sqlite3.Connection) -> None:
        reads = self._reads
        notifier = self.notifier
        version = self._data_version(conn)
        interval = POLL_MIN
        last_poll = time.monotonic()
        while True:
            timeout: float | None = None
            if notifier.has_waiters:
                timeout = max(last_poll + interval - time.monotonic(), 0.0)
            try:
                item = reads.get(timeout=timeout)
            except queue.Empty:
                item = None
            if item is _STOP:
                return
            if item is _KICK:
                interval = POLL_MIN
            elif item is not None:
                self._run_reads(conn, item)
            if notifier.has_waiters and time.monotonic() - last_poll >= interval:
                last_poll = time.monotonic()
                self.polls += 1
                current = self._data_version(conn)
                if current != version:
                    version = current
                    interval = POLL_MIN
                    try:
                        notifier.external_change(conn)
                    except sqlite3.Error:
                        pass
                else:
                    interval = min(interval * 1.5, POLL_MAX)

    def _run_reads(self, conn: sqlite3.Connection, first: _Request) -> None:
        results: list[tuple[_Request, bool, Any]] = []
        request: Any = first
        while True:
            try:
                results.append((request, True, request.fn(conn)))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                results.append((request, False, self._mapped(exc)))
            if len(results) >= MAX_BATCH:
                break
            try:
                request = self._reads.get_nowait()
            except queue.Empty:
                break
            if request is _STOP or request is _KICK:
                self._reads.put(request)  # handled by the loop after this batch
                break
        _deliver(results)

    @staticmethod
    def _data_version(conn: sqlite3.Connection) -> int:
        try:
            return int(conn.execute("PRAGMA data_version").fetchall()[0][0])
        except sqlite3.Error:
            return -1
