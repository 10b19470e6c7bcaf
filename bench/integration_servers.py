"""Servers for :mod:`bench.integrations`, each in its own process.

``receiver PORT`` — answers every POST with 204 (a webhook receiver).
``sse PORT CLIENTS EVENTS`` — a :class:`~conveyor.integrations.realtime.RealtimeApp`; once
CLIENTS streams are open it publishes EVENTS events at 100/s, each stamped with its send time.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import uvicorn


async def receiver(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def sse_app(clients: int, events: int) -> Any:
    from conveyor.integrations import EventEnvelope
    from conveyor.integrations.realtime import Broadcaster, RealtimeApp

    hub = Broadcaster(history=events + 10)
    app = RealtimeApp(hub, buffer=1024)

    async def publisher() -> None:
        while app.open_connections < clients:
            await asyncio.sleep(0.01)
        for n in range(events):
            hub.publish(EventEnvelope(f"s{n}", "bench.tick", {"n": n, "sent": time.time()}))
            await asyncio.sleep(0.01)

    async def wrapper(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            asyncio.get_running_loop().create_task(publisher())
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        await app(scope, receive, send)

    return wrapper


def main() -> None:
    kind, port = sys.argv[1], int(sys.argv[2])
    app: Any = receiver if kind == "receiver" else sse_app(int(sys.argv[3]), int(sys.argv[4]))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", lifespan="auto", backlog=2048)


if __name__ == "__main__":
    main()
