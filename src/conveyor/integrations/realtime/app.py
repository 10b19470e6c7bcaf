"""The realtime ASGI app: SSE and WebSocket endpoints over a realtime source (Starlette).

``pip install 'conveyor[realtime]'``. Mount it anywhere::

    from fastapi import FastAPI
    from conveyor.integrations.realtime import Broadcaster, RealtimeApp

    hub = Broadcaster()
    api = FastAPI()
    api.mount("/events", RealtimeApp(hub, authorize=check_token))

Endpoints (``pattern`` may repeat; default ``#``, everything):

* ``GET /sse?pattern=order.*`` — Server-Sent Events. Each event is ``id: <position>`` plus
  ``data: <event JSON>``; the browser's ``EventSource`` resends the last id as
  ``Last-Event-ID`` when it reconnects, and the stream resumes after it. ``event: reset`` means
  the position could not be resumed (reload your state); ``event: overflow`` means this client
  fell too far behind and was dropped (``EventSource`` reconnects and resumes by itself). A
  comment line every ``keepalive`` seconds keeps proxies from closing an idle stream.
* ``WS /ws?pattern=order.*&lastEventId=42`` — WebSocket; each message is
  ``{"id": <position>, "event": {...}}`` or ``{"reset": {...}}``; a slow client is closed with
  code 1013 and resumes by reconnecting with ``lastEventId``.
* ``/sse/{channel}`` and ``/ws/{channel}`` for named channels (seed 003's
  ``realtime.channels``), each bound to a pattern.

``authorize(connection, patterns)`` (plain or async) decides per request; ``False``/``None``
refuses it (401 for SSE, close code 1008 for WebSocket). Every connection has a bounded buffer
(``buffer`` events); publishing never waits for a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from conveyor.integrations._extras import require
from conveyor.integrations.envelope import EventEnvelope, check_pattern
from conveyor.integrations.realtime.hub import Connection, Frame, RealtimeSource, Reset

require("starlette", "realtime")
from starlette.requests import HTTPConnection, Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route, Router, WebSocketRoute  # noqa: E402
from starlette.types import Receive, Scope, Send  # noqa: E402
from starlette.websockets import WebSocket, WebSocketDisconnect  # noqa: E402

log = logging.getLogger("conveyor.realtime")
Authorize = Callable[[HTTPConnection, Sequence[str]], Awaitable[Any] | Any]
SLOW_CONSUMER = 1013  # WebSocket "try again later"


class RealtimeApp:
    """An ASGI app streaming events over SSE and WebSocket (see the module docstring)."""

    def __init__(
        self,
        source: RealtimeSource,
        *,
        authorize: Authorize | None = None,
        channels: Mapping[str, str] | None = None,
        allow_patterns: bool = True,
        buffer: int = 256,
        keepalive: float = 15.0,
        retry_ms: int = 2000,
    ) -> None:
        if buffer < 1 or keepalive <= 0:
            raise ValueError("buffer and keepalive must be positive")
        self.source = source
        self.authorize = authorize
        self.channels = {name: check_pattern(p) for name, p in (channels or {}).items()}
        self.allow_patterns = allow_patterns
        self.buffer = buffer
        self.keepalive = keepalive
        self.retry_ms = retry_ms
        self.dropped = 0
        self.open_connections = 0
        routes: list[Any] = [
            Route("/sse/{channel}", self._sse_endpoint),
            WebSocketRoute("/ws/{channel}", self._ws_endpoint),
        ]
        if allow_patterns:
            routes += [Route("/sse", self._sse_endpoint), WebSocketRoute("/ws", self._ws_endpoint)]
        self._router = Router(routes=routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._router(scope, receive, send)

    # -- shared -----------------------------------------------------------------------------
    def _patterns(self, conn: HTTPConnection) -> list[str]:
        channel = conn.path_params.get("channel")
        if channel is not None:
            if channel not in self.channels:
                raise LookupError(f"unknown channel {channel!r}")
            return [self.channels[channel]]
        patterns = conn.query_params.getlist("pattern") or ["#"]
        return [check_pattern(p) for p in patterns]

    async def _allowed(self, conn: HTTPConnection, patterns: Sequence[str]) -> bool:
        if self.authorize is None:
            return True
        verdict = self.authorize(conn, patterns)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        return bool(verdict)

    # -- SSE --------------------------------------------------------------------------------
    async def _sse_endpoint(self, request: Request) -> Any:
        try:
            patterns = self._patterns(request)
        except LookupError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        if not await self._allowed(request, patterns):
            return JSONResponse({"error": "not authorized"}, status_code=401)
        last_id = request.headers.get("last-event-id") or request.query_params.get("lastEventId")
        return _SSEStream(self, patterns, last_id)

    # -- WebSocket --------------------------------------------------------------------------
    async def _ws_endpoint(self, websocket: WebSocket) -> None:
        # Accept first, then refuse with a close code: browsers see the code and the reason
        # (a refused handshake shows only as a generic error).
        await websocket.accept()
        try:
            patterns = self._patterns(websocket)
        except (LookupError, ValueError) as exc:
            await websocket.close(code=1008, reason=str(exc)[:120])
            return
        if not await self._allowed(websocket, patterns):
            await websocket.close(code=1008, reason="not authorized")
            return
        last_id = websocket.query_params.get("lastEventId")
        connection = await self.source.open(patterns, last_id, self.buffer)
        self.open_connections += 1

        async def write() -> None:
            async for frame in connection:
                await websocket.send_text(_ws_text(frame))

        async def read() -> None:
            with contextlib.suppress(WebSocketDisconnect):
                while True:
                    message = await websocket.receive()
                    if message["type"] == "websocket.disconnect":
                        return

        try:
            overflowed = await _run(connection, write(), read())
        finally:
            self.open_connections -= 1
            self.source.release(connection)
        if overflowed:
            self.dropped += 1
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    websocket.close(SLOW_CONSUMER, "slow consumer; reconnect with lastEventId"), 1
                )


class _SSEStream:
    """A raw ASGI response, so a stuck write can be abandoned when the client is dropped."""

    def __init__(self, app: RealtimeApp, patterns: list[str], last_id: str | None) -> None:
        self.app = app
        self.patterns = patterns
        self.last_id = last_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self.app
        connection = await app.source.open(self.patterns, self.last_id, app.buffer)
        app.open_connections += 1
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]

        async def write() -> None:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await _body(send, f"retry: {app.retry_ms}\n: conveyor realtime\n\n".encode())
            iterator = connection.__aiter__()
            while True:
                try:
                    frame = await asyncio.wait_for(iterator.__anext__(), app.keepalive)
                except TimeoutError:
                    await _body(send, b": keepalive\n\n")
                    continue
                except StopAsyncIteration:
                    return
                await _body(send, _sse_bytes(frame))

        async def read() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return

        try:
            overflowed = await _run(connection, write(), read())
        finally:
            app.open_connections -= 1
            app.source.release(connection)
        if overflowed:
            app.dropped += 1
            log.info("realtime: dropped a slow SSE client", extra={"action": "realtime_drop"})
        with contextlib.suppress(Exception):
            tail = b"event: overflow\ndata: {}\n\n" if overflowed else b""
            await asyncio.wait_for(
                send({"type": "http.response.body", "body": tail, "more_body": False}), 1
            )


async def _run(connection: Connection, write: Awaitable[None], read: Awaitable[None]) -> bool:
    """Run the writer until it ends, the client leaves, or the connection is dropped; return
    whether it was dropped for being too slow."""
    tasks = {
        asyncio.ensure_future(write),
        asyncio.ensure_future(read),
        asyncio.ensure_future(connection.closed.wait()),
    }
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if not isinstance(exc, (OSError, WebSocketDisconnect)):
                log.warning("realtime connection failed: %r", exc)
    return connection.overflowed


async def _body(send: Send, chunk: bytes) -> None:
    await send({"type": "http.response.body", "body": chunk, "more_body": True})


def _sse_bytes(frame: Frame) -> bytes:
    if isinstance(frame, Reset):
        data = json.dumps({"reason": frame.reason, "position": frame.position})
        return f"id: {frame.position}\nevent: reset\ndata: {data}\n\n".encode()
    assert isinstance(frame, EventEnvelope)
    body = frame.to_json().decode()
    return f"id: {frame.position if frame.position is not None else ''}\ndata: {body}\n\n".encode()


def _ws_text(frame: Frame) -> str:
    if isinstance(frame, Reset):
        return json.dumps({"reset": {"reason": frame.reason, "position": frame.position}})
    assert isinstance(frame, EventEnvelope)
    return json.dumps({"id": frame.position, "event": frame.to_dict()}, separators=(",", ":"))
