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
from uuid import uuid4

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

    With a ``probe`` (a way to send a notification through another connection), the first
    connection checks that LISTEN works at all: it listens on a probe channel and sends
    itself a unique payload there. Behind a transaction pooler the LISTEN stays on a server
    session the pooler has already handed to someone else, so the payload never arrives;
    after ``probe_timeout`` seconds the listener logs a warning naming ``target``, stops for
    good and calls ``on_broken()`` (waiters then poll). See
    :mod:`conveyor.backends.postgres.pooling`.
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
        probe: Callable[[str, str], Awaitable[None]] | None = None,
        probe_timeout: float = 5.0,
        on_broken: Callable[[], None] | None = None,
        target: str = "the server",
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
        self._probe = probe
        self._probe_timeout = probe_timeout
        self._on_broken = on_broken
        self._target = target
        #: Whether a notification sent through another connection arrived (``None``: not
        #: checked yet; ``False``: it did not, or could not be sent).
        self.verified: bool | None = None

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

    async def _send_probe(
        self, conn: psycopg.AsyncConnection[Any]
    ) -> tuple[str, str, float] | None:
        """On the first connection: listen on the probe channel and send it a unique payload
        through another connection; (channel, payload, deadline), or ``None`` when there is
        nothing to check (checked already, no probe, or the send failed: no verdict)."""
        if self._probe is None or self.verified is not None:
            return None
        channel = self._channels[0].rsplit(":", 1)[0] + ":probe"
        token = uuid4().hex
        await conn.execute(f"LISTEN {quote_ident(channel)}")
        try:
            await self._probe(channel, token)
        except ConveyorError as exc:
            log.debug("LISTEN self-check not sent (%s); assuming LISTEN works", exc)
            self.verified = False
            return None
        return channel, token, time.monotonic() + self._probe_timeout

    async def _give_up(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """The probe never arrived: LISTEN does not reach this connection. Stop for good."""
        log.warning(
            "LISTEN on %s did not receive its own test notification within %gs: the "
            "connection is probably behind a transaction pooler (PgBouncer pool_mode = "
            "transaction), where LISTEN never works. Waiting workers poll instead of waking "
            "at once; pass listen_url= (a direct or session-pooled connection) for instant "
            "wake-ups, or pooled=True / listen=False to skip this check",
            self._target,
            self._probe_timeout,
        )
        self.verified = False
        try:
            await conn.execute("UNLISTEN *")  # on whichever session the pooler gives us
        except psycopg.Error:
            pass
        await self._close()
        if self._on_broken is not None:
            self._on_broken()

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
                probe = await self._send_probe(conn)
                self.connected = True
                self._ready.set()
                if self.reconnects or backoff > 0.05:
                    self._on_gap()
                backoff = 0.05
                while True:
                    wait = self._ping_interval
                    if probe is not None:
                        wait = max(min(wait, probe[2] - time.monotonic()), 0.0)
                    async for note in conn.notifies(timeout=wait):
                        if probe is not None and note.channel == probe[0]:
                            if note.payload == probe[1]:
                                self.verified, probe = True, None
                            continue
                        self._on_notify(note.channel, note.payload)
                    if probe is not None and time.monotonic() >= probe[2]:
                        await self._give_up(conn)
                        return
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
