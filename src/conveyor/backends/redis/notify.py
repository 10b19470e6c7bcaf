"""Pushed notifications of the Redis backend over one pub/sub connection per client.

Scripts ``PUBLISH`` two kinds of messages:

* ``{prefix}:cancel`` carries the id of a running job whose cancellation was requested; a
  worker reads them through :meth:`RedisBackend.subscribe_cancellations` (the heartbeat's
  ``cancel_requested`` flag is the fallback when a message is missed);
* ``{prefix}:done:<id>`` fires when job ``<id>`` reaches a terminal state; it wakes
  :meth:`RedisBackend.wait_for_finish`, which subscribes only to the jobs it waits for.

Pub/sub is fire-and-forget: a message published while the connection is down is lost. So the
reader reconnects with backoff (redis-py re-subscribes) and then wakes every finish waiter to
re-read its job, and waiters also re-read on a slow timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

log = logging.getLogger("conveyor.redis")


class Notifier:
    """Dispatches pub/sub messages to cancellation listeners and finish waiters."""

    def __init__(self, client: Redis, base: str, *, cancel_pattern: str | None = None) -> None:
        self._client = client
        self._cancel_channel = base + "cancel"
        #: Redis Cluster: every queue publishes on its own ``{prefix:queue}:cancel`` channel,
        #: so cancellations are read through this pattern instead of one channel.
        self._cancel_pattern = cancel_pattern
        self._done_prefix = base + "done:"
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._start_lock = asyncio.Lock()
        self._listeners: set[asyncio.Queue[str]] = set()
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._confirmed: dict[str, asyncio.Future[None]] = {}

    async def _start(self) -> PubSub:
        async with self._start_lock:
            if self._pubsub is None:
                pubsub = self._client.pubsub()
                try:
                    if self._cancel_pattern is not None:
                        await pubsub.psubscribe(self._cancel_pattern)
                    else:
                        await pubsub.subscribe(self._cancel_channel)
                except BaseException:
                    with contextlib.suppress(RedisError, OSError):
                        await pubsub.aclose()
                    raise
                self._pubsub = pubsub
                self._reader = asyncio.create_task(self._read(pubsub), name="conveyor-redis-pubsub")
            return self._pubsub

    async def _read(self, pubsub: PubSub) -> None:
        backoff = 0.05
        while True:
            try:
                message = await pubsub.get_message(timeout=None)
            except (RedisError, OSError) as exc:
                log.warning(
                    "Redis pub/sub connection lost (%s); reconnecting in %.2fs",
                    exc,
                    backoff,
                    extra={"action": "redis_pubsub_reconnect"},
                )
                await asyncio.sleep(backoff)  # backoff between reconnection attempts
                backoff = min(backoff * 2, 2.0)
                if self._cancel_pattern is not None:
                    pubsub = await self._rebuild(pubsub)
                self._wake_all()
                continue
            if message is None:
                continue
            backoff = 0.05
            channel = message["channel"].decode()
            kind = message["type"]
            if kind == "subscribe":
                future = self._confirmed.get(channel)
                if future is not None and not future.done():
                    future.set_result(None)
                if channel == self._cancel_channel:
                    self._wake_all()  # (re)connected: messages may have been missed
            elif kind == "psubscribe":
                self._wake_all()  # (re)connected: messages may have been missed
            elif kind == "pmessage":
                job_id = message["data"].decode()
                for queue in self._listeners:
                    queue.put_nowait(job_id)
            elif kind == "message":
                if channel == self._cancel_channel:
                    job_id = message["data"].decode()
                    for queue in self._listeners:
                        queue.put_nowait(job_id)
                else:
                    for event in self._waiters.get(channel, ()):
                        event.set()

    async def _rebuild(self, old: PubSub) -> PubSub:
        """Redis Cluster: a new pub/sub connection (to whichever node serves the pattern's
        slot now, after a fail-over), subscribed to everything the old one was."""
        with contextlib.suppress(RedisError, OSError):
            await old.aclose()
        pubsub = self._client.pubsub()
        self._pubsub = pubsub
        with contextlib.suppress(RedisError, OSError):
            assert self._cancel_pattern is not None
            await pubsub.psubscribe(self._cancel_pattern)
            for channel in list(self._waiters):
                await pubsub.subscribe(channel)
        return pubsub

    def _wake_all(self) -> None:
        for events in self._waiters.values():
            for event in events:
                event.set()

    async def cancellations(self) -> AsyncIterator[str]:
        """Ids of running jobs whose cancellation is requested, as they are published."""
        await self._start()
        queue: asyncio.Queue[str] = asyncio.Queue()
        self._listeners.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._listeners.discard(queue)

    @contextlib.asynccontextmanager
    async def watch(self, job_id: str, base: str | None = None) -> AsyncIterator[asyncio.Event]:
        """An event set whenever job ``job_id`` may have finished; subscribed on entry (the
        subscription is confirmed, so nothing published afterwards is missed). ``base``: the
        key base the job's scripts publish under (its queue's, on Redis Cluster)."""
        pubsub = await self._start()
        channel = (self._done_prefix if base is None else base + "done:") + job_id
        event = asyncio.Event()
        waiters = self._waiters.setdefault(channel, set())
        waiters.add(event)
        try:
            confirmed = self._confirmed.get(channel)
            if confirmed is None:
                confirmed = asyncio.get_running_loop().create_future()
                self._confirmed[channel] = confirmed
                await pubsub.subscribe(channel)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(confirmed), 5.0)
            yield event
        finally:
            waiters.discard(event)
            if not waiters and self._waiters.get(channel) is waiters:
                del self._waiters[channel]
                self._confirmed.pop(channel, None)
                with contextlib.suppress(RedisError, OSError):
                    await (self._pubsub or pubsub).unsubscribe(channel)

    async def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()
