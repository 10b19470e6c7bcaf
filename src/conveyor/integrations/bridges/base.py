"""The bridge interface: events out to a broker, broker messages in as events.

Every bridge has the same small surface:

* ``await bridge.publish(event)`` returns only once the **broker confirmed** the message
  (RabbitMQ publisher confirm, JetStream PubAck, MQTT PUBACK). While the broker is down it
  reconnects and retries with backoff (the same message id every time) until it is confirmed
  or ``deadline`` passes, so nothing is lost when the broker comes back; a retry after a lost
  confirm can duplicate (at-least-once), and the event id travels with the message
  (AMQP ``message_id``, ``Nats-Msg-Id``, the JSON body) for deduplication downstream.
* ``async for inbound in bridge.consume(): ...; await inbound.ack()`` — messages arrive as
  :class:`Inbound` (a decoded :class:`~conveyor.integrations.envelope.EventEnvelope` plus ack
  and reject); the broker redelivers anything not acknowledged. :meth:`Bridge.pump` does the
  usual loop: store each event with your callback, acknowledge only after it returns.
* ``bridge.status()`` — counters and the last error, with the broker URL's password redacted.

The routing/partition key comes from a dotted path (``key_path``, default ``type``, the event
name; seed 003's ``partitionKey: metadata.tenantId``). A path that the event lacks falls back
to the event name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from conveyor.integrations.envelope import EventEnvelope, lookup_path
from conveyor.integrations.errors import BrokerUnavailableError
from conveyor.integrations.secrets import redact_url

log = logging.getLogger("conveyor.bridges")


@dataclass
class BridgeStatus:
    """What ``conveyor stats`` shows about a bridge."""

    name: str
    broker: str
    url: str
    connected: bool = False
    published: int = 0
    consumed: int = 0
    acked: int = 0
    rejected: int = 0
    retries: int = 0
    reconnects: int = 0
    last_error: str | None = None
    last_error_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Inbound:
    """One consumed message: the decoded event, and ack/reject that reach the broker."""

    __slots__ = ("_ack", "_bridge", "_done", "_reject", "event", "raw")

    def __init__(
        self,
        bridge: Bridge,
        event: EventEnvelope,
        raw: bytes,
        ack: Callable[[], Awaitable[None]],
        reject: Callable[[bool], Awaitable[None]],
    ) -> None:
        self._bridge = bridge
        self.event = event
        self.raw = raw
        self._ack = ack
        self._reject = reject
        self._done = False

    async def ack(self) -> None:
        """Acknowledge: the broker forgets the message (call after the event is stored)."""
        if not self._done:
            self._done = True
            await self._ack()
            self._bridge._status.acked += 1

    async def reject(self, requeue: bool = True) -> None:
        """Hand the message back (``requeue=True``) or drop/dead-letter it."""
        if not self._done:
            self._done = True
            await self._reject(requeue)
            self._bridge._status.rejected += 1


class Bridge(ABC):
    """Base of the broker bridges; subclasses implement the ``_`` methods."""

    broker: str = "broker"
    #: Exceptions that mean "the broker or the connection failed": reconnect and retry.
    transient: tuple[type[BaseException], ...] = (OSError, ConnectionError, TimeoutError)

    def __init__(
        self,
        url: str,
        *,
        name: str | None = None,
        key_path: str = "type",
        publish_timeout: float = 10.0,
        retry_initial: float = 0.05,
        retry_max: float = 2.0,
    ) -> None:
        if publish_timeout <= 0 or retry_initial <= 0 or retry_max < retry_initial:
            raise ValueError("bridge timeouts and retry delays must be positive")
        self.url = url
        self.key_path = key_path
        self.publish_timeout = publish_timeout
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self._status = BridgeStatus(name or self.broker, self.broker, redact_url(url))
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._status.url!r}, name={self._status.name!r})"

    # -- what subclasses provide ------------------------------------------------------------
    @abstractmethod
    async def _connect(self) -> None:
        """Open the connection (and declare what publishing needs)."""

    @abstractmethod
    async def _disconnect(self) -> None:
        """Drop the connection, ignoring errors (it may already be broken)."""

    @abstractmethod
    async def _publish_confirmed(self, event: EventEnvelope, key: str, body: bytes) -> None:
        """Publish one message and return once the broker confirmed it."""

    @abstractmethod
    def _consume(self) -> AsyncIterator[Inbound]:
        """Yield inbound messages over one connection; raise a transient error when it
        breaks (the caller reconnects)."""

    async def _declare(self) -> None:  # noqa: B027 - optional hook
        """Create the inbound side's durable subscription (queue, consumer, session)."""

    # -- the interface ----------------------------------------------------------------------
    async def declare(self) -> None:
        """Create the durable inbound subscription now, so messages published from here on are
        kept for this bridge even before it starts consuming (an AMQP queue and binding, a
        JetStream durable consumer, an MQTT persistent session)."""
        delay = self.retry_initial
        for _ in range(5):
            try:
                async with self._lock:
                    await self._ensure()
                await self._declare()
                return
            except self.transient as exc:
                self._failed(exc)
                async with self._lock:
                    await self._disconnect()
                delay = await self._backoff(delay, None)
        raise BrokerUnavailableError(
            f"{self.broker} bridge {self._status.name!r}: cannot declare the subscription; "
            f"last error: {self._status.last_error}"
        )

    def key_for(self, event: EventEnvelope) -> str:
        """The routing/partition key of ``event`` (its value at ``key_path``, else its name)."""
        return lookup_path(event, self.key_path) or event.name

    def status(self) -> BridgeStatus:
        """A snapshot of the bridge's counters and last error."""
        return BridgeStatus(**asdict(self._status))

    async def connect(self) -> None:
        """Connect now (publish and consume also connect on demand)."""
        async with self._lock:
            await self._ensure()

    async def _ensure(self) -> None:
        if not self._status.connected:
            await self._connect()
            self._status.connected = True

    def _failed(self, exc: BaseException) -> None:
        self._status.connected = False
        self._status.last_error = f"{type(exc).__name__}: {exc}"[:300]
        self._status.last_error_at = time.time()

    async def _backoff(self, delay: float, deadline: float | None) -> float:
        if deadline is not None and time.monotonic() + delay > deadline:
            raise BrokerUnavailableError(
                f"{self.broker} bridge {self._status.name!r} at {self._status.url}: not "
                f"confirmed before the deadline; last error: {self._status.last_error}"
            )
        await asyncio.sleep(delay)
        return min(delay * 2, self.retry_max)

    async def publish(self, event: EventEnvelope, *, deadline: float | None = None) -> None:
        """Publish ``event`` and return once the broker confirmed it.

        Retries (reconnecting, same message id) while the broker is unreachable; ``deadline``
        is a ``time.monotonic()`` instant after which it gives up with
        :class:`~conveyor.integrations.errors.BrokerUnavailableError` (default: never).
        """
        key = self.key_for(event)
        body = event.to_json()
        delay = self.retry_initial
        while True:
            try:
                async with self._lock:
                    await self._ensure()
                await self._publish_confirmed(event, key, body)
                self._status.published += 1
                return
            except self.transient as exc:
                self._status.retries += 1
                self._failed(exc)
                log.warning(
                    "%s bridge %s: publish of %s not confirmed (%s); retrying",
                    self.broker,
                    self._status.name,
                    event.id,
                    self._status.last_error,
                    extra={"action": "bridge_retry", "event_id": event.id},
                )
                async with self._lock:
                    await self._disconnect()
                delay = await self._backoff(delay, deadline)

    async def publish_many(self, events: Iterable[EventEnvelope], *, concurrency: int = 64) -> None:
        """Publish several events with up to ``concurrency`` confirms outstanding; returns
        once every one is confirmed (order across keys is not kept)."""
        gate = asyncio.Semaphore(concurrency)

        async def one(event: EventEnvelope) -> None:
            async with gate:
                await self.publish(event)

        async with asyncio.TaskGroup() as group:
            for event in events:
                group.create_task(one(event))

    async def consume(self) -> AsyncIterator[Inbound]:
        """Yield inbound messages forever, reconnecting after broker failures (anything not
        acknowledged before a failure is redelivered by the broker)."""
        delay = self.retry_initial
        while True:
            try:
                async with self._lock:
                    await self._ensure()
                async for inbound in self._consume():
                    delay = self.retry_initial
                    self._status.consumed += 1
                    yield inbound
                return
            except self.transient as exc:
                self._failed(exc)
                self._status.reconnects += 1
                log.warning(
                    "%s bridge %s: consumer lost its connection (%s); reconnecting",
                    self.broker,
                    self._status.name,
                    self._status.last_error,
                    extra={"action": "bridge_reconnect"},
                )
                async with self._lock:
                    await self._disconnect()
                delay = await self._backoff(delay, None)

    async def pump(self, store: Callable[[EventEnvelope], Awaitable[Any]]) -> None:
        """Consume forever: ``await store(event)``, then acknowledge. If ``store`` raises, the
        message is handed back to the broker (redelivered later) and the error propagates."""
        async for inbound in self.consume():
            try:
                await store(inbound.event)
            except BaseException:
                with contextlib.suppress(*self.transient):
                    await inbound.reject(requeue=True)
                raise
            try:
                await inbound.ack()
            except self.transient as exc:
                # The connection broke between storing and acknowledging: the broker will
                # redeliver this message (a duplicate, as at-least-once allows); consume()
                # reconnects on its next read.
                self._failed(exc)
                log.warning(
                    "%s bridge %s: ack of %s lost (%s); it will be redelivered",
                    self.broker,
                    self._status.name,
                    inbound.event.id,
                    self._status.last_error,
                    extra={"action": "bridge_ack_lost", "event_id": inbound.event.id},
                )

    async def aclose(self) -> None:
        """Close the connection."""
        async with self._lock:
            await self._disconnect()
            self._status.connected = False

    async def __aenter__(self) -> Bridge:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _decode(self, body: bytes) -> EventEnvelope | None:
        try:
            return EventEnvelope.from_json(body)
        except ValueError as exc:
            log.error(
                "%s bridge %s: dropped an undecodable message (invalid_payload): %s",
                self.broker,
                self._status.name,
                exc,
                extra={"action": "bridge_invalid_payload", "code": "invalid_payload"},
            )
            return None
