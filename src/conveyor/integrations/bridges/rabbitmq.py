"""RabbitMQ bridge over aio-pika (``pip install 'conveyor[bridges]'``).

Out: a durable topic exchange; each event is one persistent message (``message_id`` = event
id, routing key = the key path's value) published on a channel with **publisher confirms**
and ``mandatory`` set, so an unroutable message comes back as an error instead of vanishing;
``publish`` returns after the broker's ack. In: a durable queue bound to the exchange with
``binding`` (AMQP topic syntax: ``order.*``, ``#``); prefetch is bounded, and a message is
acknowledged only when :meth:`Inbound.ack` is called.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from conveyor.integrations._extras import require
from conveyor.integrations.bridges.base import Bridge, Inbound
from conveyor.integrations.envelope import EventEnvelope
from conveyor.integrations.errors import IntegrationError

require("aio_pika", "bridges", "aio-pika")
import aio_pika  # noqa: E402
import aiormq.abc  # noqa: E402
import aiormq.exceptions  # noqa: E402
import pamqp.commands  # noqa: E402


class NotRoutedError(IntegrationError):
    """RabbitMQ returned a ``mandatory`` message: no queue is bound for its routing key.
    The bridge retries it (a queue may be bound later) instead of losing it."""

    code = "not_routed"


class RabbitMQBridge(Bridge):
    """Events to and from RabbitMQ: ``RabbitMQBridge("amqp://guest:guest@127.0.0.1/",
    exchange="conveyor.events", queue="conveyor.in", binding="order.#")``."""

    broker = "rabbitmq"
    transient = (
        OSError,
        ConnectionError,
        TimeoutError,
        aiormq.exceptions.AMQPError,
        aiormq.exceptions.ChannelInvalidStateError,
        NotRoutedError,
    )

    def __init__(
        self,
        url: str = "amqp://guest:guest@127.0.0.1:5672/",
        *,
        exchange: str = "conveyor.events",
        queue: str | None = None,
        binding: str = "#",
        prefetch: int = 64,
        mandatory: bool = True,
        connection_name: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(url, **options)
        self.connection_name = connection_name or f"conveyor-{self._status.name}"
        self.exchange_name = exchange
        self.queue_name = queue
        self.binding = binding
        self.prefetch = prefetch
        self.mandatory = mandatory
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None

    async def _connect(self) -> None:
        self._connection = await aio_pika.connect(
            self.url,
            timeout=self.publish_timeout,
            client_properties={"connection_name": self.connection_name},
        )
        channel = await self._connection.channel(publisher_confirms=True)
        self._exchange = await channel.declare_exchange(
            self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )

    async def _disconnect(self) -> None:
        connection, self._connection, self._exchange = self._connection, None, None
        if connection is not None:
            await _quietly(connection.close())

    async def _publish_confirmed(self, event: EventEnvelope, key: str, body: bytes) -> None:
        exchange = self._exchange
        if exchange is None:
            raise ConnectionError("not connected")
        message = aio_pika.Message(
            body,
            message_id=event.id,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            type=event.name,
        )
        try:
            confirmation = await exchange.publish(
                message, routing_key=key, mandatory=self.mandatory, timeout=self.publish_timeout
            )
        except asyncio.CancelledError:
            # aiormq cancels pending confirmations when the server closes the connection;
            # only a cancellation of this task itself is a real one.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            raise ConnectionError("the connection closed before the broker confirmed") from None
        # With confirms + mandatory an unroutable message comes back as Return, then Ack:
        # aio-pika hands the Return over as the result instead of raising.
        if isinstance(confirmation, aiormq.abc.DeliveredMessage) and isinstance(
            confirmation.delivery, pamqp.commands.Basic.Return
        ):
            raise NotRoutedError(
                f"no queue is bound to exchange {self.exchange_name!r} for routing key {key!r}"
            )

    async def _declare_queue(
        self, channel: aio_pika.abc.AbstractChannel
    ) -> aio_pika.abc.AbstractQueue:
        if self.queue_name is None:
            raise ValueError("RabbitMQBridge(queue=...) is needed to consume")
        exchange = await channel.declare_exchange(
            self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(self.queue_name, durable=True)
        await queue.bind(exchange, routing_key=self.binding)
        return queue

    async def _declare(self) -> None:
        connection = self._connection
        if connection is None:
            raise ConnectionError("not connected")
        channel = await connection.channel()
        try:
            await self._declare_queue(channel)
        finally:
            await _quietly(channel.close())

    async def _consume(self) -> AsyncIterator[Inbound]:
        connection = self._connection
        if connection is None:
            raise ConnectionError("not connected")
        channel = await connection.channel()
        try:
            await channel.set_qos(prefetch_count=self.prefetch)
            queue = await self._declare_queue(channel)
            async with queue.iterator() as messages:
                async for message in messages:
                    event = self._decode(message.body)
                    if event is None:
                        await message.reject(requeue=False)
                        continue
                    yield Inbound(self, event, message.body, *_acks(message))
        finally:
            await _quietly(channel.close())
        raise ConnectionError("the RabbitMQ consumer was closed")


async def _quietly(closing: Awaitable[Any]) -> None:
    """Close something that may already be broken, and let aio-pika's close callbacks run
    (they are tasks; a loop closed under them warns)."""
    try:
        await asyncio.wait_for(closing, 5.0)
    except (Exception, asyncio.CancelledError):  # noqa: BLE001 - already broken
        pass
    for _ in range(3):
        await asyncio.sleep(0)


def _acks(message: aio_pika.abc.AbstractIncomingMessage) -> tuple[Any, Any]:
    async def ack() -> None:
        await message.ack()

    async def reject(requeue: bool) -> None:
        await message.reject(requeue=requeue)

    return ack, reject
