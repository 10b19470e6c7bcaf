"""Event integrations (issue 17): webhooks, broker bridges, realtime fan-out.

``python -m bench.integrations '<json spec>'`` prints ``BENCH-RESULT {"rows": [...]}``:

* webhook deliveries/s to a local receiver (uvicorn in another process) with signing, the SSRF
  guard and the delivery record, 32 in flight; next to plain httpx POSTs to the same receiver
  (the client's own rate) in the same run;
* events/s through each bridge out (``publish_many``, broker-confirmed) and in (``pump``:
  decode, store callback, ack), next to the broker client's own confirmed publish rate at the
  same concurrency, in the same run: RabbitMQ (aio-pika), NATS JetStream (nats-py), MQTT QoS 1
  (aiomqtt);
* SSE fan-out to 100 connected clients: publish→receive latency p50/p99 over every delivery
  (the server in another process publishes 100 events/s).

A broker that is not reachable gives a row with a ``reason`` instead of a number.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import traceback
import uuid
from typing import Any

Row = dict[str, Any]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def row(group: str, name: str, value: float | None, unit: str, note: str = "") -> Row:
    return {"group": group, "name": name, "value": value, "unit": unit, "note": note}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def start_server(kind: str, port: int, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": REPO}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.integration_servers", kind, str(port), *extra],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 20
    while not reachable(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"{kind} server did not start: {err[-500:]}")
        time.sleep(0.05)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


# -- webhooks ---------------------------------------------------------------------------------
async def webhooks(n: int) -> list[Row]:
    import httpx

    from conveyor.integrations import EventEnvelope
    from conveyor.integrations.webhooks import (
        AddressPolicy,
        RetrySchedule,
        WebhookEndpoint,
        WebhookSender,
        generate_secret,
    )

    port = free_port()
    server = start_server("receiver", port)
    try:
        url = f"http://127.0.0.1:{port}/hook"
        endpoint = WebhookEndpoint.create(
            url,
            generate_secret(),
            policy=AddressPolicy(allow=("127.0.0.0/8",)),
            retry=RetrySchedule(delays=()),
        )
        gate = asyncio.Semaphore(32)
        events = [EventEnvelope(f"w{i}", "order.created", {"n": i}) for i in range(n)]
        latencies: list[float] = []

        async with WebhookSender(max_connections=32) as sender:
            await sender.attempt(endpoint, events[0])  # warm the pool

            async def one(event: EventEnvelope) -> None:
                async with gate:
                    record = await sender.attempt(endpoint, event)
                    if not record.succeeded:
                        raise RuntimeError(f"delivery failed: {record}")
                    latencies.append(record.latency_ms)

            started = time.perf_counter()
            await asyncio.gather(*(one(e) for e in events))
            signed = n / (time.perf_counter() - started)

        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        async with httpx.AsyncClient(limits=limits, trust_env=False) as client:
            body = events[0].to_json()

            async def plain() -> None:
                async with gate:
                    (await client.post(url, content=body)).raise_for_status()

            await plain()
            started = time.perf_counter()
            await asyncio.gather(*(plain() for _ in range(n)))
            raw = n / (time.perf_counter() - started)
    finally:
        stop(server)
    return [
        row(
            "webhooks",
            "webhook deliveries (signed, SSRF-guarded, logged)",
            signed,
            "deliveries/s",
            f"{n} deliveries, 32 in flight; p50 {pct(latencies, 0.5):.2f} ms, "
            f"p99 {pct(latencies, 0.99):.2f} ms",
        ),
        row(
            "webhooks",
            "plain httpx POST (the client's own rate)",
            raw,
            "requests/s",
            "same receiver, same concurrency",
        ),
    ]


# -- bridges ----------------------------------------------------------------------------------
async def raw_publish_rate(kind: str, n: int, tag: str) -> float:
    """The broker client's own confirmed publish rate, 64 in flight."""
    gate = asyncio.Semaphore(64)
    body = b'{"id":"x","type":"bench.raw","data":{}}'
    if kind == "rabbitmq":
        import aio_pika

        conn = await aio_pika.connect("amqp://guest:guest@127.0.0.1:5672/")
        channel = await conn.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(
            f"bench.raw.{tag}", aio_pika.ExchangeType.TOPIC, auto_delete=True
        )
        queue = await channel.declare_queue(f"bench.raw.{tag}", auto_delete=True)
        await queue.bind(exchange, "#")

        async def one(i: int) -> None:
            async with gate:
                await exchange.publish(
                    aio_pika.Message(
                        body, message_id=str(i), delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                    ),
                    routing_key="bench.raw",
                )

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        rate = n / (time.perf_counter() - started)
        await queue.delete(if_unused=False, if_empty=False)
        await conn.close()
        return rate
    if kind == "nats":
        import nats

        nc = await nats.connect("nats://127.0.0.1:4222")
        js = nc.jetstream()
        await js.add_stream(name=f"RAW{tag}", subjects=[f"raw{tag}.>"])

        async def one_js(i: int) -> None:
            async with gate:
                await js.publish(f"raw{tag}.x", body, headers={"Nats-Msg-Id": str(i)})

        started = time.perf_counter()
        await asyncio.gather(*(one_js(i) for i in range(n)))
        rate = n / (time.perf_counter() - started)
        await js.delete_stream(f"RAW{tag}")
        await nc.close()
        return rate
    import aiomqtt

    async with aiomqtt.Client("127.0.0.1", 1883, max_inflight_messages=100) as client:
        client.pending_calls_threshold = 10_000

        async def one_mqtt(i: int) -> None:
            async with gate:
                await client.publish(f"raw{tag}/x", body, qos=1)

        started = time.perf_counter()
        await asyncio.gather(*(one_mqtt(i) for i in range(n)))
        return n / (time.perf_counter() - started)


async def bridge_rates(kind: str, n: int) -> list[Row]:
    from conveyor.integrations import EventEnvelope
    from conveyor.integrations.bridges.mqtt import MQTTBridge
    from conveyor.integrations.bridges.nats import NATSBridge
    from conveyor.integrations.bridges.rabbitmq import RabbitMQBridge

    tag = uuid.uuid4().hex[:8]
    if kind == "rabbitmq":
        out: Any = RabbitMQBridge(exchange=f"bench.{tag}")
        inn: Any = RabbitMQBridge(exchange=f"bench.{tag}", queue=f"bench.{tag}", prefetch=256)
    elif kind == "nats":
        out = NATSBridge(stream=f"B{tag}", subject_prefix=f"b{tag}")
        inn = NATSBridge(stream=f"B{tag}", subject_prefix=f"b{tag}", durable=f"in{tag}", batch=256)
    else:
        out = MQTTBridge(topic_prefix=f"b{tag}")
        inn = MQTTBridge(topic_prefix=f"b{tag}", client_id=f"bench-in-{tag}")
    events = [EventEnvelope(f"{tag}-{i}", "order.created", {"n": i}) for i in range(n)]
    raw = await raw_publish_rate(kind, n, tag)
    await inn.declare()
    started = time.perf_counter()
    await out.publish_many(events, concurrency=64)
    rate_out = n / (time.perf_counter() - started)
    await out.aclose()

    stored = 0
    done = asyncio.Event()

    async def store(event: Any) -> None:
        nonlocal stored
        stored += 1
        if stored >= n:
            done.set()

    started = time.perf_counter()
    pump = asyncio.create_task(inn.pump(store))
    await asyncio.wait_for(done.wait(), 300)
    rate_in = n / (time.perf_counter() - started)
    pump.cancel()
    await asyncio.gather(pump, return_exceptions=True)
    await inn.aclose()
    await cleanup(kind, tag)
    label = {"rabbitmq": "RabbitMQ", "nats": "NATS JetStream", "mqtt": "MQTT QoS 1"}[kind]
    return [
        row(
            "bridges",
            f"{label}: bridge out",
            rate_out,
            "events/s",
            f"{n} events, 64 confirms in flight",
        ),
        row(
            "bridges",
            f"{label}: bridge in",
            rate_in,
            "events/s",
            "decode, store callback, ack each",
        ),
        row(
            "bridges",
            f"{label}: client's own confirmed publish",
            raw,
            "messages/s",
            "same broker, same concurrency, same run",
        ),
    ]


async def cleanup(kind: str, tag: str) -> None:
    try:
        if kind == "rabbitmq":
            import aio_pika

            conn = await aio_pika.connect("amqp://guest:guest@127.0.0.1:5672/")
            channel = await conn.channel()
            await channel.queue_delete(f"bench.{tag}")
            await channel.exchange_delete(f"bench.{tag}")
            await conn.close()
        elif kind == "nats":
            import nats

            nc = await nats.connect("nats://127.0.0.1:4222")
            await nc.jetstream().delete_stream(f"B{tag}")
            await nc.close()
        else:
            import aiomqtt

            async with aiomqtt.Client(
                "127.0.0.1", 1883, identifier=f"bench-in-{tag}", clean_session=True
            ):
                pass  # a clean session discards the durable one
    except Exception:  # noqa: BLE001 - best effort
        pass


# -- SSE fan-out ------------------------------------------------------------------------------
async def sse_fanout(clients: int, events: int) -> list[Row]:
    import httpx

    port = free_port()
    server = start_server("sse", port, str(clients), str(events))
    latencies: list[float] = []
    try:
        limits = httpx.Limits(max_connections=clients + 5)
        async with httpx.AsyncClient(limits=limits, timeout=120, trust_env=False) as client:

            async def listen() -> None:
                got = 0
                async with client.stream("GET", f"http://127.0.0.1:{port}/sse") as response:
                    async for line in response.aiter_lines():
                        if line.startswith("data: "):
                            sent = json.loads(line[6:])["data"]["sent"]
                            latencies.append((time.time() - sent) * 1000.0)
                            got += 1
                            if got >= events:
                                return

            await asyncio.gather(*(listen() for _ in range(clients)))
    finally:
        stop(server)
    return [
        row(
            "realtime",
            f"SSE fan-out to {clients} clients: delivery p99",
            pct(latencies, 0.99),
            "ms",
            f"{events} events at 100/s, {len(latencies)} deliveries; "
            f"p50 {pct(latencies, 0.5):.2f} ms",
        ),
    ]


async def measure(spec: dict[str, Any]) -> dict[str, Any]:
    smoke = bool(spec.get("smoke"))
    rows: list[Row] = []
    rows += await webhooks(200 if smoke else 3000)
    for kind, port in (("rabbitmq", 5672), ("nats", 4222), ("mqtt", 1883)):
        if not reachable(port):
            rows.append({"group": "bridges", "name": kind, "reason": f"{kind} not reachable"})
            continue
        try:
            rows += await bridge_rates(kind, 200 if smoke else 5000)
        except Exception as exc:  # noqa: BLE001 - a failing broker is a row, not a crash
            rows.append({"group": "bridges", "name": kind, "reason": f"failed: {exc!r}"[:300]})
    rows += await sse_fanout(100, 10 if smoke else 200)
    return {"rows": rows}


def main() -> None:
    spec = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    try:
        result = asyncio.run(measure(spec))
    except Exception:  # noqa: BLE001 - reported to the harness
        result = {"error": traceback.format_exc()[-3000:]}
    sys.stdout.write("BENCH-RESULT " + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
