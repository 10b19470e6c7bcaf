"""Wake-ups for the PostgreSQL backend: one LISTEN connection per client, and a NOTIFY limiter.

NOTIFY is a hint, never a promise: waiters always re-check the table and poll as a fallback.
Every transaction that notifies takes a cluster-wide lock at commit, so notifications are
rate-limited per client and key (a queue name, or "a job finished"): at most one per
``interval``, with one trailing notification at the end of a busy window so a waiter never
misses the last change of a burst.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import psycopg

from conveyor.backends.postgres.statements import quote_ident
from conveyor.errors import ConveyorError

log = logging.getLogger("conveyor.backends.postgres")

NotifyHandler = Callable[[str, str], None]


class Listener:
    """A dedicated autocommit connection that LISTENs on ``channels`` and reconnects.

    Notifications go to ``on_notify(channel, payload)``. ``on_gap()`` is called whenever
    notifications may have been missed (the connection dropped, or came back after a drop) so
    waiters re-check the table. While no notification arrives, the connection is pinged every
    ``ping_interval`` seconds and replaced if it does not answer within ``ping_timeout``.
    """

    def __init__(
        self,
        conninfo: str,
        channels: Sequence[str],
        on_notify: NotifyHandler,
        on_gap: Callable[[], None],
        *,
        max_backoff: float = 5.0,
        connect_timeout: float = 10.0,
        ping_interval: float = 10.0,
        ping_timeout: float = 5.0,
    ) -> None:
        self._conninfo = conninfo
        self._channels = list(channels)
        self._on_notify = on_notify
        self._on_gap = on_gap
        self._ready = asyncio.Event()
        self._max_backoff = max_backoff
        self._connect_timeout = connect_timeout
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._task: asyncio.Task[None] | None = None
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self.connected = False
        self.reconnects = 0

    def start(self) -> None:
        """Start listening in the background (idempotent)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="conveyor-listen")

    async def wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the LISTEN to be in place; whether it is."""
        if not self.connected:
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except TimeoutError:
                pass
        return self.connected

    async def stop(self) -> None:
        """Stop listening and close the connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        await self._close()

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        self.connected = False
        self._ready.clear()
        if conn is not None and not conn.closed:
            try:
                await conn.close()
            except psycopg.Error:
                pass

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._conninfo,
                    autocommit=True,
                    connect_timeout=max(1, int(self._connect_timeout)),
                )
                self._conn = conn
                for channel in self._channels:
                    await conn.execute(f"LISTEN {quote_ident(channel)}")
                self.connected = True
                self._ready.set()
                if self.reconnects or backoff > 0.05:
                    self._on_gap()
                backoff = 0.05
                while True:
                    async for note in conn.notifies(timeout=self._ping_interval):
                        self._on_notify(note.channel, note.payload)
                    # Quiet for a while: make sure the connection still answers (a network
                    # that silently drops packets would otherwise leave us deaf forever).
                    async with asyncio.timeout(self._ping_timeout):
                        await conn.execute("SELECT 1")
            except (psycopg.Error, OSError, TimeoutError) as exc:
                if self.connected:
                    log.warning("LISTEN connection lost (%s); reconnecting", exc)
                    self.reconnects += 1
                else:
                    log.debug("LISTEN connection failed (%s); retrying in %.2fs", exc, backoff)
            await self._close()
            # Waiters fall back to polling while we are away; wake them so they notice.
            self._on_gap()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)


class NotifyLimiter:
    """At most one notification per key per ``interval``, plus one trailing notification.

    ``allow(key)`` says whether the caller may notify now (and records it). When it says no,
    a trailing notification for the key is scheduled at the end of the window through
    ``send(channel, payload)``.
    """

    def __init__(self, send: Callable[[str, str], Awaitable[None]], interval: float = 0.1) -> None:
        self._send = send
        self.interval = interval
        self._last: dict[tuple[str, str], float] = {}
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent = 0
        self.suppressed = 0

    def allow(self, channel: str, key: str, trailing_payload: str | None = None) -> bool:
        """Whether to notify ``channel`` for ``key`` now; if not, one is sent later."""
        k = (channel, key)
        now = time.monotonic()
        last = self._last.get(k)
        if last is None or now - last >= self.interval:
            self._last[k] = now
            self.sent += 1
            return True
        self.suppressed += 1
        if k not in self._timers:
            loop = asyncio.get_running_loop()
            payload = key if trailing_payload is None else trailing_payload
            self._timers[k] = loop.call_later(
                last + self.interval - now, self._fire, k, channel, payload
            )
        return False

    def _fire(self, k: tuple[str, str], channel: str, payload: str) -> None:
        self._timers.pop(k, None)
        self._last[k] = time.monotonic()
        self.sent += 1
        task = asyncio.get_running_loop().create_task(self._safe_send(channel, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _safe_send(self, channel: str, payload: str) -> None:
        try:
            await self._send(channel, payload)
        except ConveyorError as exc:  # a lost hint: waiters poll anyway
            log.debug("trailing NOTIFY failed: %s", exc)

    async def close(self) -> None:
        """Cancel pending trailing notifications and wait for ones in flight."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
