"""NATS JetStream bridge over nats-py (``pip install 'conveyor[bridges]'``).

Out: events go to ``{subject_prefix}.{key}`` on a JetStream stream (created when missing,
file storage); each publish waits for the stream's **PubAck** and carries ``Nats-Msg-Id`` =
event id, so a retry inside the stream's ``duplicate_window`` (default 2 minutes) is
deduplicated by the server. A retry after the window can duplicate: consumers stay
at-least-once. In: a durable pull consumer (``durable``) on ``filter_subject``; a message is
acknowledged only by :meth:`Inbound.ack` and redelivered after ``ack_wait`` otherwise.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from conveyor.integrations._extras import require
from conveyor.integrations.bridges.base import Bridge, Inbound
from conveyor.integrations.envelope import EventEnvelope

require("nats", "bridges", "nats-py")
import nats  # noqa: E402
import nats.aio.client  # noqa: E402
import nats.errors  # noqa: E402
import nats.js  # noqa: E402
import nats.js.api  # noqa: E402
import nats.js.errors  # noqa: E402


class NATSBridge(Bridge):
    """Events to and from NATS JetStream: ``NATSBridge("nats://127.0.0.1:4222",
    stream="CONVEYOR", subject_prefix="conveyor", durable="conveyor-in")``."""

    broker = "nats"
    transient = (OSError, ConnectionError, TimeoutError, nats.errors.Error)

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        *,
        stream: str = "CONVEYOR",
        subject_prefix: str = "conveyor",
        durable: str | None = None,
        filter_subject: str | None = None,
        duplicate_window: float = 120.0,
        ack_wait: float = 30.0,
        batch: int = 64,
        **options: Any,
    ) -> None:
        super().__init__(url, **options)
        self.stream = stream
        self.subject_prefix = subject_prefix
        self.durable = durable
        self.filter_subject = filter_subject or f"{subject_prefix}.>"
        self.duplicate_window = duplicate_window
        self.ack_wait = ack_wait
        self.batch = batch
        self._nc: nats.aio.client.Client | None = None
        self._js: nats.js.JetStreamContext | None = None

    async def _connect(self) -> None:
        # nats-py keeps retrying an initial connection that is refused: bound it here, and
        # let the bridge's own retry loop (with its backoff and deadline) try again.
        nc = await asyncio.wait_for(
            nats.connect(
                self.url,
                connect_timeout=self.publish_timeout,
                allow_reconnect=False,
                max_reconnect_attempts=0,
                error_cb=_quiet,
                disconnected_cb=None,
            ),
            self.publish_timeout,
        )
        js = nc.jetstream(timeout=self.publish_timeout)
        config = nats.js.api.StreamConfig(
            name=self.stream,
            subjects=[f"{self.subject_prefix}.>"],
            storage=nats.js.api.StorageType.FILE,
            duplicate_window=self.duplicate_window,
        )
        try:
            await js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            await js.add_stream(config)
        self._nc, self._js = nc, js

    async def _disconnect(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            try:
                await nc.close()
            except Exception:  # noqa: BLE001 - already broken; nothing to do
                pass

    def subject_for(self, key: str) -> str:
        """The subject an event with routing key ``key`` is published to."""
        return f"{self.subject_prefix}.{key}"

    async def _publish_confirmed(self, event: EventEnvelope, key: str, body: bytes) -> None:
        js = self._js
        if js is None:
            raise ConnectionError("not connected")
        await js.publish(
            self.subject_for(key),
            body,
            timeout=self.publish_timeout,
            headers={"Nats-Msg-Id": event.id},
        )

    async def _subscribe(self) -> Any:
        if self.durable is None:
            raise ValueError("NATSBridge(durable=...) is needed to consume")
        js = self._js
        if js is None:
            raise ConnectionError("not connected")
        config = nats.js.api.ConsumerConfig(
            ack_policy=nats.js.api.AckPolicy.EXPLICIT, ack_wait=self.ack_wait
        )
        return await js.pull_subscribe(
            self.filter_subject, durable=self.durable, stream=self.stream, config=config
        )

    async def _declare(self) -> None:
        sub = await self._subscribe()
        await sub.unsubscribe()

    async def _consume(self) -> AsyncIterator[Inbound]:
        sub = await self._subscribe()
        while True:
            if self._nc is None or self._nc.is_closed:
                raise ConnectionError("the NATS connection closed")
            try:
                messages = await sub.fetch(self.batch, timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            for message in messages:
                event = self._decode(message.data)
                if event is None:
                    await message.term()
                    continue
                yield Inbound(self, event, message.data, *_acks(message))


async def _quiet(exc: Exception) -> None:
    """nats-py reports connection errors here; the bridge sees them as failed calls."""


def _acks(message: Any) -> tuple[Any, Any]:
    async def ack() -> None:
        await message.ack()

    async def reject(requeue: bool) -> None:
        if requeue:
            await message.nak()
        else:
            await message.term()

    return ack, reject
