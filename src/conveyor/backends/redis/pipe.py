"""One pipelined connection that carries every script call of a Redis backend.

redis-py spends about three times Redis's own time on each call: a connection is checked out
of the pool and back in, the command is packed argument by argument, and the reply is awaited
through stream reader layers. A job queue makes one short script call per transition, so that
overhead is most of the cost of an enqueue or a completion.

:class:`ScriptPipe` instead keeps one plain TCP connection per backend (per event loop) and
writes each call to it as soon as it is made: concurrent callers share the connection, their
commands travel pipelined and the replies come back in order, parsed by hiredis and handed to
each caller's future. Redis runs scripts one at a time anyway, so one connection is as fast as
many, and the socket sees a few large writes instead of many small ones.

What it keeps from redis-py: the connection settings of the client's pool (host, port, db,
user, password, timeouts, client name), its retry policy (backoff and jitter on connection
errors and timeouts; a repeated fenced write is answered by its token, see ``lib.lua``) and
its exception classes, so :func:`~conveyor.backends.redis.connect.translate_errors` reports
failures exactly as before. Blocking commands and pub/sub never go through the pipe. TLS,
Unix sockets, RESP3 and credential providers are left to redis-py (:func:`pipe_for` returns
``None``), as is any client with a custom connection class.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    ConnectionError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

Arg = str | bytes | int | float

#: How long a connection may stay silent, after a caller gave up waiting on it, before it is
#: taken for dead and replaced.
SILENCE = 2.0


class PipeClosedError(RedisError):
    """The backend was closed; not retried (unlike a dropped connection)."""


#: Error replies whose first word names a redis-py exception class other than ResponseError.
#: The message keeps that word (``translate_errors`` reads it).
ERROR_CLASSES: dict[str, type[Exception]] = {
    "NOSCRIPT": NoScriptError,
    "OOM": OutOfMemoryError,
    "LOADING": BusyLoadingError,  # a ConnectionError: retried while the server loads its data
    "READONLY": ReadOnlyError,
    "NOAUTH": AuthenticationError,
    "WRONGPASS": AuthenticationError,
    "NOPERM": NoPermissionError,
}


def error_from_reply(message: str) -> Exception:
    """The redis-py exception for an error reply."""
    code = message.split(" ", 1)[0]
    cls = ERROR_CLASSES.get(code)
    if cls is None and message.startswith(("ERR invalid password", "ERR max number of clients")):
        cls = AuthenticationError if "password" in message else ConnectionError
    return (cls or ResponseError)(message)


def pack(args: Sequence[Arg]) -> bytes:
    """One command in RESP, as redis-py would write it (numbers as their ``repr``)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, int | float) and not isinstance(arg, bool):
            data = repr(arg).encode()
        else:
            raise TypeError(f"a Redis command argument must be str, bytes or a number: {arg!r}")
        parts.append(b"$%d\r\n" % len(data))
        parts.append(data)
        parts.append(b"\r\n")
    return b"".join(parts)


class _Protocol(asyncio.Protocol):
    """Matches replies to waiting futures, first in first out."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None
        #: Event-loop time of the last bytes received.
        self.last_read = 0.0
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.last_read = self.loop.time()
        self.reader.feed(data)
        pending = self.pending
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self.fail(ConnectionError(f"Redis sent a malformed reply: {exc}"))
                return
            if reply is False:
                return
            if not pending:  # a reply nobody asked for: the stream is out of step
                self.fail(ConnectionError("Redis sent a reply that was not asked for"))
                return
            fut = pending.popleft()
            if fut.done():  # its caller gave up (cancelled or timed out)
                continue
            if isinstance(reply, hiredis.ReplyError):
                fut.set_exception(error_from_reply(str(reply)))
            else:
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(ConnectionError(f"Connection to Redis lost{f': {exc}' if exc else ''}"))

    def fail_if_silent_since(self, since: float) -> None:
        """Drop the connection if calls wait and nothing has arrived since ``since``."""
        if self.lost is None and self.pending and self.last_read < since:
            self.fail(ConnectionError("no reply from Redis; reconnecting"))

    def fail(self, error: Exception) -> None:
        """Close the connection and fail every call still waiting for a reply."""
        if self.lost is None:
            self.lost = error
        if self.transport is not None:
            self.transport.close()
        while self.pending:
            fut = self.pending.popleft()
            if not fut.done():
                fut.set_exception(error)


class ScriptPipe:
    """Commands from any number of concurrent callers, pipelined over one connection."""

    def __init__(self, settings: dict[str, Any], retry: Retry | None) -> None:
        self.host: str = settings.get("host") or "localhost"
        self.port = int(settings.get("port") or 6379)
        self.db = int(settings.get("db") or 0)
        self.username: str | None = settings.get("username")
        self.password: str | None = settings.get("password")
        self.client_name: str | None = settings.get("client_name")
        self.connect_timeout: float | None = settings.get("socket_connect_timeout")
        self.timeout: float | None = settings.get("socket_timeout")
        self.keepalive = bool(settings.get("socket_keepalive"))
        self.retry = retry
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None
        self._closed = False

    async def execute(self, *args: Arg) -> Any:
        """Send one command and return its reply, retried on connection errors and timeouts
        like redis-py (the same command is sent again)."""
        packed = pack(args)
        if self.retry is None:
            return await self._once(packed)
        return await self.retry.call_with_retry(lambda: self._once(packed), self._on_failure)

    async def close(self) -> None:
        self._closed = True
        if self._protocol is not None:
            self._protocol.fail(ConnectionError("the Redis backend is closed"))
            self._protocol = None

    async def _on_failure(self, error: Exception) -> None:
        if self._protocol is not None and self._protocol.lost is not None:
            self._protocol = None  # reconnect on the next attempt

    async def _once(self, packed: bytes) -> Any:
        protocol = self._protocol
        if protocol is None or protocol.lost is not None:
            protocol = await self._connect()
        transport = protocol.transport
        assert transport is not None
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        protocol.pending.append(fut)
        sent_at = loop.time()
        transport.write(packed)
        try:
            if self.timeout is None:
                return await fut
            async with asyncio.timeout(self.timeout):
                return await fut  # a timeout cancels fut; its late reply is then skipped
        except TimeoutError as exc:
            # Nothing for this call within the read timeout. If nothing at all came back
            # since it was sent, the connection is dead: drop it (as redis-py drops a
            # connection that timed out), and the calls stuck behind it fail and retry. If
            # other replies did come, the server is alive and merely slow: only this call
            # gives up, and its late reply is skipped.
            if protocol.last_read < sent_at:
                protocol.fail(RedisTimeoutError(f"Timeout reading from {self.host}:{self.port}"))
            raise RedisTimeoutError(f"Timeout reading from {self.host}:{self.port}") from exc
        except asyncio.CancelledError:
            # The caller gave up (a deadline of its own, a shutdown); its late reply will be
            # skipped and the others' calls are untouched: dropping the connection now would
            # make them send again commands Redis may already have run. But a connection
            # that silently died (a NAT or firewall forgot it: no FIN, no RST) would hold
            # every caller until the read timeout, so if nothing comes back for
            # SILENCE seconds more, it is dropped then.
            if protocol.last_read < sent_at:
                loop.call_later(SILENCE, protocol.fail_if_silent_since, sent_at)
            raise

    async def _connect(self) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._closed:
                raise PipeClosedError("the Redis backend is closed")
            current = self._protocol
            if current is not None and current.lost is None:
                return current
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(self.connect_timeout):
                    _, protocol = await loop.create_connection(_Protocol, self.host, self.port)
            except TimeoutError as exc:
                raise RedisTimeoutError(f"Timeout connecting to {self.host}:{self.port}") from exc
            except OSError as exc:
                raise ConnectionError(
                    f"Error connecting to {self.host}:{self.port}: {exc.strerror or exc}"
                ) from exc
            transport = protocol.transport
            assert transport is not None
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    if self.keepalive:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            try:
                await self._handshake(protocol)
                if self._closed:  # closed while this connection was being set up
                    raise PipeClosedError("the Redis backend is closed")
            except BaseException:
                protocol.fail(ConnectionError("handshake failed"))
                raise
            self._protocol = protocol
            return protocol

    async def _handshake(self, protocol: _Protocol) -> None:
        """Authenticate, name the connection and pick the database, pipelined in one write.

        ``HELLO 2 AUTH`` as redis-py does (it sends ``HELLO 3 AUTH``): it works for a password
        on the default user and for ACL users, and, unlike a bare ``AUTH``, is not refused
        when the server's default user has no password."""
        commands: list[list[Arg]] = []
        if self.password is not None:
            commands.append(["HELLO", 2, "AUTH", self.username or "default", self.password])
        if self.client_name:
            commands.append(["CLIENT", "SETNAME", self.client_name])
        if self.db:
            commands.append(["SELECT", self.db])
        if not commands:
            return
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        protocol.pending.extend(futures)
        assert protocol.transport is not None
        protocol.transport.write(b"".join(pack(c) for c in commands))
        try:
            async with asyncio.timeout(self.connect_timeout or self.timeout):
                for fut in futures:
                    await fut
        except TimeoutError as exc:
            raise RedisTimeoutError(f"Timeout connecting to {self.host}:{self.port}") from exc
        finally:
            for fut in futures:  # after a failure, the later replies are nobody's business
                if fut.done() and not fut.cancelled():
                    fut.exception()
                else:
                    fut.cancel()


def pipe_for(client: Redis, retry: Retry | None) -> ScriptPipe | None:
    """A :class:`ScriptPipe` with the settings of ``client``'s pool, or ``None`` when the
    client connects in a way the pipe does not speak (TLS, Unix socket, RESP3, a credential
    provider or a custom connection class): such clients keep using redis-py."""
    pool = client.connection_pool
    settings: dict[str, Any] = dict(pool.connection_kwargs)
    if pool.connection_class is not Connection:
        return None
    if settings.get("credential_provider") is not None:
        return None
    if settings.get("protocol") not in (None, 2, "2"):
        return None
    if retry is None:
        retry = settings.get("retry")
    return ScriptPipe(settings, retry if isinstance(retry, Retry) else None)
