"""Wake-ups for the SQLite backend.

Writers in this process report what each committed transition did (:class:`Effects`); the
:class:`Notifier` wakes the waiters it concerns on their own event loops. Commits by other
processes are seen by polling ``PRAGMA data_version`` (the reader thread does that while
anyone waits): every job waiter is told to look again, and finish waiters are checked with
one query.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterable

from conveyor.backends.sqlite.queries import Q, dumps


class Effects:
    """What the transitions of one transaction did, for the notifier (filled in by ops)."""

    __slots__ = ("finished", "ready", "scheduled")

    def __init__(self) -> None:
        self.ready: set[str] = set()  # queues that gained queued jobs
        self.scheduled: set[str] = set()  # queues that gained scheduled jobs
        self.finished: set[str] = set()  # ids of jobs that reached a terminal state

    def clear(self) -> None:
        self.ready.clear()
        self.scheduled.clear()
        self.finished.clear()

    def __bool__(self) -> bool:
        return bool(self.ready or self.scheduled or self.finished)


class Waiter:
    """One coroutine waiting on its own loop; ``ready`` says a job surely became claimable."""

    __slots__ = ("event", "loop", "queues", "ready")

    def __init__(self, loop: asyncio.AbstractEventLoop, queues: frozenset[str]) -> None:
        self.loop = loop
        self.event = asyncio.Event()
        self.queues = queues
        self.ready = False

    def reset(self) -> None:
        self.ready = False
        self.event.clear()

    def wake(self) -> None:
        """Set the event from any thread (ignored once the loop is closed)."""
        if self.loop.is_closed():
            return
        try:
            self.loop.call_soon_threadsafe(self.event.set)
        except RuntimeError:
            pass


class Notifier:
    """The waiters of one factory, shared by every client and event loop of it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._job_waiters: set[Waiter] = set()
        self._finish_waiters: dict[str, set[Waiter]] = {}
        self._on_first_waiter: Callable[[], None] = lambda: None

    def set_kick(self, kick: Callable[[], None]) -> None:
        """Register the call that makes the reader thread start polling ``data_version``."""
        self._on_first_waiter = kick

    @property
    def has_waiters(self) -> bool:
        return bool(self._job_waiters or self._finish_waiters)

    def add_job_waiter(self, waiter: Waiter) -> None:
        with self._lock:
            self._job_waiters.add(waiter)
        self._on_first_waiter()

    def remove_job_waiter(self, waiter: Waiter) -> None:
        with self._lock:
            self._job_waiters.discard(waiter)

    def add_finish_waiter(self, job_id: str, waiter: Waiter) -> None:
        with self._lock:
            self._finish_waiters.setdefault(job_id, set()).add(waiter)
        self._on_first_waiter()

    def remove_finish_waiter(self, job_id: str, waiter: Waiter) -> None:
        with self._lock:
            waiters = self._finish_waiters.get(job_id)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._finish_waiters[job_id]

    def dispatch(self, fx: Effects) -> None:
        """Wake the waiters a committed transaction of this process concerns."""
        to_wake: list[Waiter] = []
        with self._lock:
            if fx.ready or fx.scheduled:
                for waiter in self._job_waiters:
                    if not waiter.queues.isdisjoint(fx.ready):
                        waiter.ready = True
                        to_wake.append(waiter)
                    elif not waiter.queues.isdisjoint(fx.scheduled):
                        to_wake.append(waiter)
            for job_id in fx.finished:
                to_wake.extend(self._finish_waiters.get(job_id, ()))
        for waiter in to_wake:
            waiter.wake()

    def external_change(self, conn: sqlite3.Connection) -> None:
        """Another connection committed: job waiters look again; finished jobs wake theirs."""
        with self._lock:
            to_wake = list(self._job_waiters)
            watched = list(self._finish_waiters)
        if watched:
            done = _finished_or_gone(conn, watched)
            with self._lock:
                for job_id in done:
                    to_wake.extend(self._finish_waiters.get(job_id, ()))
        for waiter in to_wake:
            waiter.wake()


def _finished_or_gone(conn: sqlite3.Connection, ids: Iterable[str]) -> set[str]:
    wanted = list(ids)
    rows = conn.execute(Q["existing_among"], (dumps(wanted),)).fetchall()
    state_of = {row[0]: row[1] for row in rows}
    terminal = {"completed", "failed", "cancelled", "expired"}
    return {i for i in wanted if state_of.get(i) is None or state_of[i] in terminal}
