"""The waiting side of one PostgreSQL client: who is waiting, when to wake them, and whether a
transition may send a NOTIFY now.

``wait_for_jobs`` and ``wait_for_finish`` always re-check the table (through the callables the
backend passes in) and poll as a fallback; LISTEN only makes them return sooner. The LISTEN
connection starts on the first wait, so producers that never wait never hold one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from conveyor.backends.postgres.listen import Listener, NotifyLimiter
from conveyor.backends.postgres.statements import distinct
from conveyor.domain.job import JobRecord
from conveyor.errors import StorageUnavailableError

#: ``(a job is queued, run_at of the next scheduled job or None, the server's time)``.
Probe = Callable[[], Awaitable[tuple[bool, float | None, float]]]


class Wakeups:
    """Waiters, the LISTEN connection and the NOTIFY limiter of one backend client."""

    def __init__(
        self,
        jobs_channel: str,
        done_channel: str,
        send: Callable[[str, str], Awaitable[None]],
        *,
        listen: bool,
        poll_interval: float,
        notify_interval: float,
        connect_timeout: float,
        probe_timeout: float = 5.0,
    ) -> None:
        self.jobs_channel = jobs_channel
        self.done_channel = done_channel
        self.listen = listen
        self.poll_interval = poll_interval
        self.connect_timeout = connect_timeout
        self.probe_timeout = probe_timeout
        self._send = send
        #: LISTEN was found not to deliver (a transaction pooler): waiters only poll.
        self.listen_broken = False
        self.limiter = NotifyLimiter(send, notify_interval)
        #: Notifications received by the LISTEN connection (diagnostics and tests).
        self.received = 0
        self.listener: Listener | None = None
        self._conninfo: str | None = None
        self._target = "the server"
        self._job_waiters: list[tuple[frozenset[str], asyncio.Event]] = []
        self._done_waiters: list[asyncio.Event] = []

    def enable(self, conninfo: str | None, target: str = "the server") -> None:
        """Allow the LISTEN connection to ``conninfo`` (once the store is known to be
        reachable; ``target`` describes it in messages); ``None``: poll only."""
        self._conninfo = conninfo
        self._target = target

    async def close(self) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            await listener.stop()
        await self.limiter.close()
        self._conninfo = None
        self.wake_all()

    async def reconnect(self) -> None:
        """Drop the LISTEN connection (presumed dead) and start a new one if one was running."""
        listener, self.listener = self.listener, None
        if listener is not None:
            await listener.stop()
            await self._ensure_listener(wait=False)
            self.wake_all()

    # -- may this transition notify now? ------------------------------------------------------
    def allow_jobs(self, queues: Sequence[str]) -> tuple[list[str], list[str]]:
        """The queues to notify about now, and the others: they get a trailing notification,
        and one now too if the enqueue finds no backlog there (an idle worker may be waiting,
        and the trailing one would make it wait up to ``notify_interval``)."""
        now: list[str] = []
        idle: list[str] = []
        for q in distinct(queues):
            (now if self.limiter.allow(self.jobs_channel, q) else idle).append(q)
        return now, idle

    def allow_jobs_any(self) -> str | None:
        """The jobs channel when a notification about a queue the statement knows (not us)
        may go out now; a trailing one (empty payload) wakes every waiter."""
        allowed = self.limiter.allow(self.jobs_channel, "*", trailing_payload="")
        return self.jobs_channel if allowed else None

    def allow_done(self) -> str | None:
        """The done channel when a "job finished" notification may go out now."""
        allowed = self.limiter.allow(self.done_channel, "", trailing_payload="")
        return self.done_channel if allowed else None

    # -- waking local waiters -----------------------------------------------------------------
    def on_notify(self, channel: str, payload: str) -> None:
        self.received += 1
        if channel == self.jobs_channel:
            self.wake_jobs([payload] if payload else None)
        else:
            self.wake_done()

    def wake_jobs(self, queues: Sequence[str] | None) -> None:
        for names, event in self._job_waiters:
            if queues is None or not names.isdisjoint(queues):
                event.set()

    def wake_done(self) -> None:
        for event in self._done_waiters:
            event.set()

    def wake_all(self) -> None:
        self.wake_jobs(None)
        self.wake_done()

    @property
    def listening(self) -> bool:
        return self.listener is not None and self.listener.connected

    async def _ensure_listener(self, *, wait: bool = True) -> None:
        """Start LISTEN on first use and give it a moment, so the caller's first check and
        the first notification cannot cross."""
        if not self.listen or self._conninfo is None or self.listen_broken:
            return
        if self.listener is None:
            self.listener = Listener(
                self._conninfo,
                [self.jobs_channel, self.done_channel],
                self.on_notify,
                self.wake_all,
                connect_timeout=self.connect_timeout,
                probe=self._send,
                probe_timeout=self.probe_timeout,
                on_broken=self._on_listen_broken,
                target=self._target,
            )
            self.listener.start()
        if wait:
            await self.listener.wait_ready(self.poll_interval)

    def _on_listen_broken(self) -> None:
        """The LISTEN connection's self-test failed: poll from now on (see ``pooling``)."""
        self.listen_broken = True
        self.wake_all()

    # -- waiting ------------------------------------------------------------------------------
    async def wait_for_jobs(self, queues: Sequence[str], timeout: float, probe: Probe) -> None:
        """Return when a job is queued in ``queues``, a notification says one may be, the
        next scheduled job comes due, or ``timeout`` passes; re-check every poll interval."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        entry = (frozenset(queues), asyncio.Event())
        self._job_waiters.append(entry)
        try:
            await self._ensure_listener()
            while True:
                entry[1].clear()
                try:
                    ready, next_due, server_now = await probe()
                except StorageUnavailableError:
                    # A hint, not a promise: let the caller's claim report the outage.
                    await asyncio.sleep(max(min(self.poll_interval, deadline - loop.time()), 0))
                    return
                remaining = deadline - loop.time()
                if ready or remaining <= 0:
                    return
                due_in = None if next_due is None else max(next_due - server_now, 0.0)
                if due_in is not None and due_in <= 0:
                    return
                wait = min(remaining, self.poll_interval)
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

    async def wait_for_finish(
        self, timeout: float, fetch: Callable[[], Awaitable[JobRecord | None]]
    ) -> JobRecord | None:
        """Re-read the job when told something finished, else with a growing interval."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        event = asyncio.Event()
        self._done_waiters.append(event)
        interval = 0.01
        try:
            await self._ensure_listener()
            while True:
                event.clear()
                record = await fetch()
                remaining = deadline - loop.time()
                if record is None or record.state.is_terminal or remaining <= 0:
                    return record
                try:
                    await asyncio.wait_for(event.wait(), min(remaining, interval))
                except TimeoutError:
                    pass
                cap = self.poll_interval if self.listening else 0.25
                interval = min(interval * 2, cap)
        finally:
            self._done_waiters.remove(event)

    def stats(self) -> dict[str, Any]:
        listener = self.listener
        return {
            "notify_sent": self.limiter.sent,
            "notify_suppressed": self.limiter.suppressed,
            "listening": self.listening,
            "notify_received": self.received,
            "listen_reconnects": listener.reconnects if listener else 0,
            "listen_verified": listener.verified if listener else None,
            "listen_broken": self.listen_broken,
        }
