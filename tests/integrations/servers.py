"""Real servers for the integration tests: an HTTP receiver on uvicorn, private brokers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from conveyor.integrations.webhooks import WebhookVerificationError, verify

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A webhook receiver with scripted behaviour per path.

    ``/ok`` 200 · ``/fail`` 500 · ``/flaky/N`` 503 for the first N requests, then 200 ·
    ``/limited`` 429 with ``Retry-After: 7`` once, then 200 · ``/slow`` never answers until the
    server stops · ``/redirect`` 302 to ``/ok`` · ``/verify`` checks the Standard Webhooks
    signature with ``secret`` and answers 204 or 401.
    """

    secret: str = ""
    seen: list[Seen] = field(default_factory=list)
    verified: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    base: str = ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            message = await receive()
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
            assert message["type"] == "lifespan.shutdown"
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.seen.append(Seen(path, headers, body))
        self.counts[path] = self.counts.get(path, 0) + 1
        async with self.arrived:
            self.arrived.notify_all()
        status, extra = await self.answer(path, headers, body)
        await send({"type": "http.response.start", "status": status, "headers": extra})
        await send({"type": "http.response.body", "body": b"" if status == 204 else b"{}"})

    async def answer(
        self, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]]]:
        count = self.counts[path]
        if path == "/ok":
            return 200, []
        if path == "/fail":
            return 500, []
        if path.startswith("/flaky/"):
            return (503, []) if count <= int(path.rsplit("/", 1)[1]) else (200, [])
        if path == "/limited":
            return (429, [(b"retry-after", b"7")]) if count == 1 else (200, [])
        if path == "/slow":
            await self.release.wait()
            return 200, []
        if path == "/redirect":
            return 302, [(b"location", f"{self.base}/ok".encode())]
        if path == "/verify":
            try:
                msg_id = verify(self.secret, headers, body)
            except WebhookVerificationError as exc:
                self.rejected.append(exc.reason)
                return 401, []
            self.verified.append(msg_id)
            json.loads(body)
            return 204, []
        return 404, []

    async def wait_for(self, path: str, count: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            async with self.arrived:
                await self.arrived.wait_for(lambda: self.counts.get(path, 0) >= count)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def serve_asgi(app: Any, *, ws: str = "auto") -> AsyncIterator[str]:
    """Run ``app`` on uvicorn on a free loopback port in this event loop; yield its base URL."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="warning", lifespan="on", ws=ws, timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        release = getattr(app, "release", None)
        if isinstance(release, asyncio.Event):
            release.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        sock.close()
