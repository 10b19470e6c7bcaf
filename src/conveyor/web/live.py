"""Live updates over Server-Sent Events: one poller per dashboard and event loop checks the
store every ``live_interval`` seconds (capped counts and worker heartbeats, both cheap) and
tells every open page "changed" when the digest moves; pages then re-fetch their own main
fragment. Each subscriber's queue is bounded (a slow page misses intermediate events, never
piles them up), and a comment line every 15 s keeps proxies from closing the stream."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

from conveyor.web.reads import Reads

KEEPALIVE = 15.0
QUEUE_SIZE = 8


class LiveHub:
    """Subscribers and the one poller that feeds them."""

    def __init__(self, reads: Reads, interval: float) -> None:
        self.reads = reads
        self.interval = interval
        self._subscribers: set[asyncio.Queue[str]] = set()
        self._poller: asyncio.Task[None] | None = None
        self.digest: str | None = None

    async def compute(self) -> str:
        browser = await self.reads.browser()
        counts = await browser.count_states(self.reads.count_cap)
        workers = await self.reads.app.inspect.workers()
        state: list[Any] = [(c.queue, c.state.value, c.count) for c in counts]
        state += sorted((w.id, w.stats.get("processed"), w.stats.get("active")) for w in workers)
        return hashlib.sha1(json.dumps(state, default=str).encode()).hexdigest()[:16]

    async def _poll(self) -> None:
        while self._subscribers:
            with contextlib.suppress(Exception):
                digest = await self.compute()
                changed = self.digest is not None and digest != self.digest
                self.digest = digest
                if changed:
                    for q in list(self._subscribers):
                        if q.full():
                            continue
                        q.put_nowait(digest)
            await asyncio.sleep(self.interval)
        self._poller = None

    async def stream(self, is_disconnected: Any) -> AsyncIterator[bytes]:
        """The SSE body for one subscriber."""
        queue: asyncio.Queue[str] = asyncio.Queue(QUEUE_SIZE)
        self._subscribers.add(queue)
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll())
        try:
            yield b"retry: 3000\n\n"
            while True:
                try:
                    async with asyncio.timeout(KEEPALIVE):
                        digest = await queue.get()
                    yield f"event: changed\ndata: {digest}\n\n".encode()
                except TimeoutError:
                    if await is_disconnected():
                        return
                    yield b": keepalive\n\n"
        finally:
            self._subscribers.discard(queue)
