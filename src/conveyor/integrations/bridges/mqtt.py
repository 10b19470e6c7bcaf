"""MQTT bridge over aiomqtt (``pip install 'conveyor[bridges]'``), QoS 1.

Out: events go to ``{topic_prefix}/{key}`` (dots in the key become ``/`` levels) with QoS 1;
``publish`` returns after the broker's PUBACK. MQTT 3.1.1 has no message-id header, so the
event id travels in the JSON body for deduplication. In: a persistent session
(``clean_session=False`` with a fixed ``client_id``) subscribed to ``topic_filter`` at QoS 1 with
**manual acknowledgement**: the PUBACK is sent only by :meth:`Inbound.ack`, so a message not
acknowledged before a disconnect is resent by the broker (with DUP set) to the same session.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

from conveyor.integrations._extras import require
from conveyor.integrations.bridges.base import Bridge, Inbound
from conveyor.integrations.envelope import EventEnvelope

require("aiomqtt", "bridges")
import aiomqtt  # noqa: E402


class MQTTBridge(Bridge):
    """Events to and from an MQTT broker: ``MQTTBridge("mqtt://127.0.0.1:1883",
    topic_prefix="conveyor", client_id="conveyor-in", topic_filter="conveyor/order/#")``."""

    broker = "mqtt"
    transient = (OSError, ConnectionError, TimeoutError, aiomqtt.MqttError)

    def __init__(
        self,
        url: str = "mqtt://127.0.0.1:1883",
        *,
        topic_prefix: str = "conveyor",
        client_id: str | None = None,
        topic_filter: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(url, **options)
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
            raise ValueError(f"an MQTT URL looks like mqtt://host:1883, got {self._status.url}")
        self._host = parts.hostname
        self._port = parts.port or 1883
        self._username = parts.username
        self._password = parts.password
        self.topic_prefix = topic_prefix.rstrip("/")
        self.client_id = client_id
        self.topic_filter = topic_filter or f"{self.topic_prefix}/#"
        self._client: aiomqtt.Client | None = None

    def _new_client(self, identifier: str, clean: bool) -> aiomqtt.Client:
        client = aiomqtt.Client(
            self._host,
            self._port,
            username=self._username,
            password=self._password,
            identifier=identifier,
            clean_session=clean,
            timeout=self.publish_timeout,
            max_inflight_messages=100,
        )
        client.pending_calls_threshold = 10_000  # publish_many keeps many confirms in flight
        return client

    async def _connect(self) -> None:
        client = self._new_client(f"conveyor-out-{uuid.uuid4().hex[:12]}", clean=True)
        await client.__aenter__()
        self._client = client

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.__aexit__(None, None, None)
            except Exception:  # noqa: BLE001 - already broken; nothing to do
                pass
            _retrieve(client)

    def topic_for(self, key: str) -> str:
        """The topic an event with routing key ``key`` is published to."""
        return f"{self.topic_prefix}/{key.replace('.', '/')}"

    async def _publish_confirmed(self, event: EventEnvelope, key: str, body: bytes) -> None:
        client = self._client
        if client is None:
            raise ConnectionError("not connected")
        await client.publish(self.topic_for(key), body, qos=1, timeout=self.publish_timeout)

    async def _declare(self) -> None:
        if self.client_id is None:
            raise ValueError("MQTTBridge(client_id=...) is needed to consume (a durable session)")
        async with self._new_client(self.client_id, clean=False) as client:
            await client.subscribe(self.topic_filter, qos=1)

    async def _consume(self) -> AsyncIterator[Inbound]:
        if self.client_id is None:
            raise ValueError("MQTTBridge(client_id=...) is needed to consume (a durable session)")
        client = self._new_client(self.client_id, clean=False)
        # aiomqtt wraps paho; manual acks live there. Set before connecting: the broker
        # resends the session's pending messages right after CONNACK.
        paho = client._client
        paho.manual_ack_set(True)
        await client.__aenter__()
        try:
            await client.subscribe(self.topic_filter, qos=1)
            async for message in client.messages:
                body = bytes(message.payload) if message.payload is not None else b""
                if not isinstance(message.payload, (bytes, bytearray)):
                    body = str(message.payload).encode()
                event = self._decode(body)
                ack, reject = _acks(paho, message.mid, message.qos)
                if event is None:
                    await ack()
                    continue
                yield Inbound(self, event, body, ack, reject)
            raise ConnectionError("the MQTT connection closed")
        finally:
            try:
                await asyncio.shield(client.__aexit__(None, None, None))
            except Exception:  # noqa: BLE001 - already broken
                pass
            _retrieve(client)


def _retrieve(client: aiomqtt.Client) -> None:
    """Mark aiomqtt's "disconnected" future as seen (a broken connection leaves an exception
    there that asyncio would otherwise report as never retrieved)."""
    future = getattr(client, "_disconnected", None)
    if isinstance(future, asyncio.Future) and future.done() and not future.cancelled():
        future.exception()


def _acks(paho: Any, mid: int, qos: int) -> tuple[Any, Any]:
    async def ack() -> None:
        if qos > 0:
            paho.ack(mid, qos)

    async def reject(requeue: bool) -> None:
        # MQTT has no negative ack: leaving it unacknowledged makes the broker resend it on
        # the next connection of this session; not requeuing means acknowledging (dropping).
        if not requeue and qos > 0:
            paho.ack(mid, qos)

    return ack, reject
