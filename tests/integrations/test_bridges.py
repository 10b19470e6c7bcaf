"""Broker bridges against the real brokers: round trips with partition keys, acknowledgement
only after storage, and broker outages mid-stream (nothing lost, duplicates allowed)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.integrations import EventEnvelope
from conveyor.integrations.bridges import Bridge, bridge_from_config
from conveyor.integrations.bridges.mqtt import MQTTBridge
from conveyor.integrations.bridges.nats import NATSBridge
from conveyor.integrations.bridges.rabbitmq import RabbitMQBridge
from conveyor.integrations.errors import BrokerUnavailableError
from tests.integrations.brokers import (
    PrivateBroker,
    rabbit_close_connections,
    require_binary,
    require_port,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)
KINDS = ("rabbitmq", "nats", "mqtt")
PORTS = {"rabbitmq": 5672, "nats": 4222, "mqtt": 1883}


def tag() -> str:
    return uuid.uuid4().hex[:10]


def pair(kind: str, url: str | None, t: str, **extra: Any) -> tuple[Bridge, Bridge]:
    """An outbound and an inbound bridge on one broker, isolated by the tag ``t``."""
    if kind == "rabbitmq":
        url = url or "amqp://guest:guest@127.0.0.1:5672/"
        common = {"exchange": f"test.{t}", "key_path": "metadata.tenantId"}
        out: Bridge = RabbitMQBridge(url, connection_name=f"out-{t}", **common, **extra)
        inn: Bridge = RabbitMQBridge(
            url, queue=f"test.{t}.in", connection_name=f"in-{t}", **common, **extra
        )
    elif kind == "nats":
        url = url or "nats://127.0.0.1:4222"
        common = {"stream": f"T{t}", "subject_prefix": f"t{t}", "key_path": "metadata.tenantId"}
        out = NATSBridge(url, **common, **extra)
        inn = NATSBridge(url, durable=f"in{t}", ack_wait=1.0, **common, **extra)
    else:
        url = url or "mqtt://127.0.0.1:1883"
        common = {"topic_prefix": f"t{t}", "key_path": "metadata.tenantId"}
        out = MQTTBridge(url, **common, **extra)
        inn = MQTTBridge(url, client_id=f"in-{t}", **common, **extra)
    return out, inn


def events(n: int, t: str) -> list[EventEnvelope]:
    return [
        EventEnvelope(
            f"{t}-{i}", "order.created", {"n": i}, metadata={"tenantId": f"tenant{i % 3}"}
        )
        for i in range(n)
    ]


class Store:
    """Where inbound events land; ``pump`` acknowledges only after ``add`` returned."""

    def __init__(self) -> None:
        self.events: list[EventEnvelope] = []

    async def add(self, event: EventEnvelope) -> None:
        self.events.append(event)

    def ids(self) -> set[str]:
        return {e.id for e in self.events}


@contextlib.asynccontextmanager
async def pumping(bridge: Bridge, store: Store) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(bridge.pump(store.add))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await bridge.aclose()


@pytest.mark.parametrize("kind", KINDS)
async def test_round_trip_with_partition_key(kind: str) -> None:
    require_port(PORTS[kind], kind)
    t = tag()
    out, inn = pair(kind, None, t)
    store = Store()
    batch = events(30, t)
    await inn.declare()
    async with pumping(inn, store):
        await out.publish_many(batch)
        await wait_until(lambda: {e.id for e in batch} <= store.ids(), what="all events in")
        await wait_until(lambda: inn.status().acked >= 30, what="all acknowledged")
    await out.aclose()
    got = {e.id: e for e in store.events}
    assert got[f"{t}-4"] == batch[4]
    assert out.key_for(batch[4]) == "tenant1"
    status = out.status()
    assert status.published >= 30 and status.broker == kind
    assert inn.status().acked >= 30


@pytest.mark.parametrize("kind", KINDS)
async def test_unacknowledged_message_is_redelivered(kind: str) -> None:
    require_port(PORTS[kind], kind)
    t = tag()
    out, inn = pair(kind, None, t)
    await inn.declare()
    event = events(1, t)[0]
    await out.publish(event)
    await out.aclose()

    seen: list[str] = []
    async with contextlib.aclosing(inn.consume()) as inbound_messages:
        async for inbound in inbound_messages:  # a consumer that "crashes" before storing
            seen.append(inbound.event.id)
            if inbound.event.id == event.id:
                break
    await inn.aclose()
    assert event.id in seen

    _, again = pair(kind, None, t)
    store = Store()
    async with pumping(again, store):
        await wait_until(lambda: event.id in store.ids(), what="redelivery")
    assert again.status().acked >= 1


async def outage(
    kind: str, broker_stop: Any, broker_start: Any, out: Bridge, inn: Bridge, t: str
) -> tuple[Store, list[str]]:
    """Publish events one by one (each confirmed) while the broker goes down and comes back,
    consuming in parallel; stop 50 events after the outage. Return what was stored and the
    ids whose publish returned."""
    store = Store()
    sent: list[str] = []
    enough = asyncio.Event()
    await inn.declare()
    async with pumping(inn, store):

        async def produce() -> None:
            n = 0
            while not enough.is_set():
                event = EventEnvelope(
                    f"{t}-{n}", "order.created", {"n": n}, metadata={"tenantId": f"tenant{n % 3}"}
                )
                await out.publish(event)
                sent.append(event.id)
                n += 1

        producer = asyncio.create_task(produce())
        await wait_until(lambda: len(sent) >= 40, 60, "publishing")
        await broker_stop()
        await wait_until(lambda: out.status().retries >= 1, 60, "a failed publish")
        await broker_start()
        after = len(sent)
        await wait_until(lambda: len(sent) >= after + 50, 60, "publishing after the outage")
        enough.set()
        await asyncio.wait_for(producer, 60)
        await wait_until(
            lambda: set(sent) <= store.ids(),
            60,
            f"every event in; missing {sorted(set(sent) - store.ids())[:20]}",
        )
    await out.aclose()
    return store, sent


@pytest.mark.parametrize("kind", ["nats", "mqtt"])
async def test_private_broker_restart_mid_stream_loses_nothing(kind: str, tmp_path: Path) -> None:
    binary = "nats-server" if kind == "nats" else "mosquitto"
    require_binary(binary)
    broker = PrivateBroker(binary, tmp_path / binary)
    broker.start()
    try:
        t = tag()
        out, inn = pair(kind, broker.url, t, retry_max=0.2, publish_timeout=2.0)

        async def stop() -> None:
            await asyncio.to_thread(broker.stop)

        async def start() -> None:
            await asyncio.to_thread(broker.start)

        store, sent = await outage(kind, stop, start, out, inn, t)
        assert store.ids() >= set(sent) and len(sent) >= 90
        assert out.status().retries >= 1 and inn.status().reconnects >= 1
    finally:
        broker.stop()


async def test_rabbitmq_connections_closed_by_the_server_mid_stream() -> None:
    require_port(5672, "RabbitMQ")
    require_binary("rabbitmqctl")
    t = tag()
    out, inn = pair("rabbitmq", None, t, retry_max=0.2)

    async def close() -> None:
        closed = await asyncio.to_thread(rabbit_close_connections, f"out-{t}")
        closed += await asyncio.to_thread(rabbit_close_connections, f"in-{t}")
        assert closed >= 2

    async def nothing() -> None:
        return None

    store, sent = await outage("rabbitmq", close, nothing, out, inn, t)
    assert store.ids() >= set(sent) and len(sent) >= 90
    assert out.status().retries >= 1 and inn.status().reconnects >= 1


@pytest.mark.parametrize(
    "make",
    [
        lambda port: RabbitMQBridge(
            f"amqp://guest:hunter2@127.0.0.1:{port}/", publish_timeout=0.5, retry_max=0.1
        ),
        lambda port: NATSBridge(
            f"nats://guest:hunter2@127.0.0.1:{port}", publish_timeout=0.5, retry_max=0.1
        ),
        lambda port: MQTTBridge(
            f"mqtt://guest:hunter2@127.0.0.1:{port}", publish_timeout=0.5, retry_max=0.1
        ),
    ],
    ids=KINDS,
)
async def test_broker_passwords_never_reach_logs_errors_or_status(
    make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.integrations.servers import free_port

    bridge = make(free_port())
    loop = asyncio.get_running_loop()
    with caplog.at_level(logging.DEBUG), pytest.raises(BrokerUnavailableError) as info:
        await bridge.publish(events(1, "x")[0], deadline=loop.time() + 0.6)
    await bridge.aclose()
    shown = [str(info.value), repr(bridge), str(bridge.status().to_dict()), caplog.text]
    assert bridge.status().retries >= 1 and "•••" in bridge.status().url
    for text in shown:
        assert "hunter2" not in text


async def test_publish_gives_up_at_the_deadline_with_a_redacted_url() -> None:
    from tests.integrations.servers import free_port

    bridge = RabbitMQBridge(
        f"amqp://guest:hunter2@127.0.0.1:{free_port()}/", publish_timeout=0.5, retry_max=0.1
    )
    loop = asyncio.get_running_loop()
    with pytest.raises(BrokerUnavailableError) as info:
        await bridge.publish(events(1, "x")[0], deadline=loop.time() + 0.5)
    assert "hunter2" not in str(info.value) and "hunter2" not in repr(bridge)
    assert "hunter2" not in str(bridge.status().to_dict())
    assert bridge.status().retries >= 1


def test_bridges_from_seed_003_config() -> None:
    bridge = bridge_from_config(
        {"provider": "rabbitmq", "topic": "events", "partitionKey": "metadata.tenantId"}
    )
    assert isinstance(bridge, RabbitMQBridge) and bridge.exchange_name == "events"
    assert bridge.key_path == "metadata.tenantId"
    assert isinstance(bridge_from_config({"provider": "nats", "topic": "ev"}), NATSBridge)
    assert isinstance(bridge_from_config({"provider": "mqtt"}), MQTTBridge)
    with pytest.raises(ValueError, match="not shipped"):
        bridge_from_config({"provider": "kafka", "topic": "events"})
    with pytest.raises(ValueError, match="mqtt://"):
        MQTTBridge("http://x")


async def test_bridge_status_shows_in_conveyor_stats_without_the_password(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from conveyor import Conveyor
    from conveyor.integrations.bridges.board import report

    require_port(5672, "RabbitMQ")
    db = tmp_path / "stats.db"
    app = Conveyor(f"sqlite:///{db}")
    t = tag()
    out, _ = pair("rabbitmq", "amqp://guest:guest@127.0.0.1:5672/", t)
    try:
        await out.connect()
        await report(app, out, "out")
    finally:
        await out.aclose()
        await app.close()
    run = subprocess.run(
        [sys.executable, "-m", "conveyor", "stats", "--url", f"sqlite:///{db}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "Bridges" in run.stdout and "rabbitmq" in run.stdout and "up" in run.stdout
    assert ":guest@" not in run.stdout  # the password is redacted
    data = json.loads(
        subprocess.run(
            [sys.executable, "-m", "conveyor", "stats", "--json", "--url", f"sqlite:///{db}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    )
    [bridge] = data["bridges"]
    assert bridge["url"] == "amqp://guest:•••@127.0.0.1:5672/" and bridge["connected"] is True
