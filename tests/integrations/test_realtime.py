"""Realtime: the hub's bounded fan-out and resume, and the ASGI app over real uvicorn with
httpx (SSE) and websockets (WebSocket) clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets
from starlette.requests import HTTPConnection

from conveyor.integrations import EventEnvelope
from conveyor.integrations.envelope import check_pattern, pattern_matches
from conveyor.integrations.realtime import Broadcaster, RealtimeApp, Reset
from tests.integrations.brokers import wait_until
from tests.integrations.servers import serve_asgi


def ev(n: int, name: str = "order.created", size: int = 0) -> EventEnvelope:
    # random padding: WebSocket compression would shrink a repeated character to nothing
    return EventEnvelope(f"e{n}", name, {"n": n, "pad": secrets.token_hex(size // 2)})


def test_patterns() -> None:
    assert pattern_matches("order.*", "order.created")
    assert not pattern_matches("order.*", "order.created.late")
    assert pattern_matches("order.#", "order") and pattern_matches("order.#", "order.a.b")
    assert pattern_matches("#", "anything.at.all")
    assert not pattern_matches("order.*", "invoice.created")
    for bad in ("", "order..x", "order.cre*", "a.#b"):
        with pytest.raises(ValueError):
            check_pattern(bad)


async def test_hub_fans_out_by_pattern_and_resumes_by_position() -> None:
    hub = Broadcaster(history=100)
    orders = await hub.open(["order.*"], None, buffer=10)
    hub.publish(ev(1))
    hub.publish(ev(2, "invoice.paid"))
    hub.publish(ev(3))
    got = [await orders.__anext__(), await orders.__anext__()]
    assert [(e.id, e.position) for e in got if isinstance(e, EventEnvelope)] == [
        ("e1", 1),
        ("e3", 3),
    ]
    hub.release(orders)
    resumed = await hub.open(["#"], "1", buffer=10)
    hub.publish(ev(4))
    frames = [await resumed.__anext__() for _ in range(3)]
    assert [f.position for f in frames if isinstance(f, EventEnvelope)] == [2, 3, 4]


async def test_hub_resets_when_history_is_lost() -> None:
    hub = Broadcaster(history=3)
    for n in range(10):
        hub.publish(ev(n))
    connection = await hub.open(["#"], "2", buffer=10)
    first = await connection.__anext__()
    assert first == Reset("history_lost", 10)
    hub.publish(ev(11))
    nxt = await connection.__anext__()
    assert isinstance(nxt, EventEnvelope) and nxt.position == 11
    assert isinstance(await (await hub.open(["#"], "garbage", 4)).__anext__(), Reset)


async def test_slow_connection_is_dropped_and_never_blocks_the_publisher() -> None:
    hub = Broadcaster(history=10)
    slow = await hub.open(["#"], None, buffer=5)
    fast = await hub.open(["#"], None, buffer=5)
    received: list[int] = []
    for n in range(1000):  # publish is synchronous: it cannot wait for anyone
        hub.publish(ev(n))
        frame = await fast.__anext__()
        assert isinstance(frame, EventEnvelope) and frame.position is not None
        received.append(frame.position)
    assert received == list(range(1, 1001))
    assert slow.overflowed and slow.closed.is_set() and hub.dropped == 1
    assert slow._queue.qsize() <= 1  # its buffer was freed when it was dropped
    assert hub.connections == 1


# -- over HTTP ------------------------------------------------------------------------------


def token_auth(conn: HTTPConnection, patterns: Any) -> bool:
    return conn.query_params.get("token") == "let-me-in" and "secret.#" not in patterns


@contextlib.asynccontextmanager
async def realtime(**options: Any) -> AsyncIterator[tuple[Broadcaster, RealtimeApp, str]]:
    hub = Broadcaster(history=options.pop("history", 100))
    app = RealtimeApp(hub, authorize=token_auth, channels={"orders": "order.*"}, **options)
    async with serve_asgi(app) as base:
        yield hub, app, base


async def sse_frames(response: httpx.Response) -> AsyncIterator[dict[str, str]]:
    frame: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if "data" in frame:
                yield frame
            frame = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            frame[field] = value.removeprefix(" ")


async def test_sse_streams_resumes_with_last_event_id_and_authorizes() -> None:
    async with realtime() as (hub, app, base), httpx.AsyncClient(base_url=base) as client:
        refused = await client.get("/sse", params={"pattern": "order.*"})
        assert refused.status_code == 401
        bad = await client.get("/sse", params={"pattern": "order.cre*", "token": "let-me-in"})
        assert bad.status_code == 400 and "stand alone" in bad.json()["error"]
        assert (await client.get("/sse/nope", params={"token": "let-me-in"})).status_code == 404

        params = {"token": "let-me-in"}
        seen: list[dict[str, str]] = []
        async with client.stream("GET", "/sse/orders", params=params) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            await wait_until(lambda: app.open_connections == 1, what="connection")
            for n in range(1, 6):
                hub.publish(ev(n, "order.created" if n != 3 else "invoice.paid"))
            async for frame in sse_frames(response):
                seen.append(frame)
                if len(seen) == 4:
                    break
        assert [f["id"] for f in seen] == ["1", "2", "4", "5"]
        assert json.loads(seen[0]["data"])["type"] == "order.created"

        for n in range(6, 9):  # published while the client is away
            hub.publish(ev(n))
        resumed: list[str] = []
        headers = {"Last-Event-ID": seen[-1]["id"]}
        async with client.stream("GET", "/sse/orders", params=params, headers=headers) as r:
            async for frame in sse_frames(r):
                resumed.append(frame["id"])
                if len(resumed) == 3:
                    break
        assert resumed == ["6", "7", "8"]


async def test_sse_slow_client_is_dropped_while_a_fast_one_gets_everything() -> None:
    async with realtime(buffer=4, history=16) as (hub, app, base):
        port = int(base.rsplit(":", 1)[1])
        slow = socket.create_connection(("127.0.0.1", port))
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.sendall(b"GET /sse?token=let-me-in HTTP/1.1\r\nHost: x\r\n\r\n")  # never reads
        got: list[int] = []
        async with (
            httpx.AsyncClient(base_url=base, timeout=30) as client,
            client.stream("GET", "/sse", params={"token": "let-me-in"}) as response,
        ):
            await wait_until(lambda: app.open_connections == 2, what="two clients")
            frames = sse_frames(response)
            n = 0
            while app.dropped == 0:
                n += 1
                assert n < 5000, "the slow client was never dropped"
                hub.publish(ev(n, size=16_384))
                frame = await anext(frames)
                got.append(int(frame["id"]))
        slow.close()
        assert got == list(range(1, n + 1))
        assert app.dropped == 1 and hub.dropped >= 1


async def test_websocket_streams_resumes_and_refuses_unauthorized() -> None:
    async with realtime() as (hub, app, base):
        ws_base = base.replace("http://", "ws://")
        with pytest.raises(websockets.exceptions.ConnectionClosed) as info:
            async with websockets.connect(f"{ws_base}/ws?pattern=order.*") as ws:
                await ws.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1008

        url = f"{ws_base}/ws?pattern=order.*&token=let-me-in"
        async with websockets.connect(url) as ws:
            await wait_until(lambda: app.open_connections == 1, what="connection")
            hub.publish(ev(1))
            hub.publish(ev(2, "invoice.paid"))
            hub.publish(ev(3))
            first = [json.loads(await ws.recv()) for _ in range(2)]
        assert [m["id"] for m in first] == [1, 3]
        assert first[0]["event"]["id"] == "e1"
        hub.publish(ev(4))
        async with websockets.connect(url + "&lastEventId=3") as ws:
            message = json.loads(await ws.recv())
        assert message["id"] == 4


async def test_websocket_slow_client_is_closed_with_1013() -> None:
    async with realtime(buffer=2, history=4) as (hub, app, base):
        url = base.replace("http://", "ws://") + "/ws?token=let-me-in"
        async with websockets.connect(url, max_queue=1) as ws:
            await wait_until(lambda: app.open_connections == 1, what="connection")
            n = 0
            while app.dropped == 0:
                n += 1
                assert n < 5000, "the slow websocket was never dropped"
                hub.publish(ev(n, size=16_384))
                await asyncio.sleep(0)
            with pytest.raises(websockets.exceptions.ConnectionClosed) as info:
                while True:
                    await ws.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1013


async def test_mounts_in_fastapi() -> None:
    from fastapi import FastAPI

    hub = Broadcaster()
    realtime_app = RealtimeApp(hub, channels={"orders": "order.*"})
    api = FastAPI()

    @api.get("/health")
    def health() -> dict[str, str]:
        return {"ok": "yes"}

    api.mount("/events", realtime_app)
    async with serve_asgi(api) as base, httpx.AsyncClient(base_url=base) as client:
        assert (await client.get("/health")).json() == {"ok": "yes"}
        async with client.stream("GET", "/events/sse/orders") as response:
            await wait_until(lambda: realtime_app.open_connections == 1, what="connection")
            hub.publish(ev(1))
            frame = await anext(sse_frames(response))
        assert frame["id"] == "1" and json.loads(frame["data"])["id"] == "e1"
