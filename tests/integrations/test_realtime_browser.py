"""A real headless Chromium (Debian's, driven by Playwright) subscribes over SSE and WebSocket
from a page, and resumes its SSE stream by Last-Event-ID after the server drops it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse
from starlette.routing import Mount, Route

from conveyor.integrations import EventEnvelope
from conveyor.integrations.realtime import Broadcaster, RealtimeApp
from tests.integrations.brokers import in_ci, wait_until
from tests.integrations.servers import serve_asgi

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ENSURE = Path(__file__).resolve().parents[2] / "scripts" / "ensure-chromium.sh"
pytestmark = pytest.mark.timeout(180)

PAGE = """<!doctype html><html><body><h1>orders</h1><ul id="log"></ul><script>
window.sse = []; window.ws = []; window.resets = 0; window.sseOpens = 0;
const es = new EventSource('/rt/sse?pattern=order.*&token=let-me-in');
es.onopen = () => { window.sseOpens += 1; };
es.onmessage = (m) => {
  const event = JSON.parse(m.data);
  window.sse.push(Number(m.lastEventId));
  const li = document.createElement('li'); li.textContent = m.lastEventId + ' ' + event.type;
  document.getElementById('log').appendChild(li);
};
es.addEventListener('reset', () => { window.resets += 1; });
const sock = new WebSocket(`ws://${location.host}/rt/ws?pattern=order.*&token=let-me-in`);
sock.onmessage = (m) => { window.ws.push(JSON.parse(m.data).id); };
</script></body></html>"""


def chromium() -> str:
    if not os.access(CHROMIUM, os.X_OK):
        run = subprocess.run(["bash", str(ENSURE)], capture_output=True, text=True, check=False)
        if run.returncode != 0 or not os.access(CHROMIUM, os.X_OK):
            message = f"chromium is not installed ({ENSURE.name}: {run.stderr.strip()})"
            if in_ci():
                pytest.fail(message)
            pytest.skip(message)
    return CHROMIUM


def allow(conn: HTTPConnection, patterns: Any) -> bool:
    return conn.query_params.get("token") == "let-me-in"


async def page(request: Request) -> HTMLResponse:
    return HTMLResponse(PAGE)


def order(n: int, name: str = "order.created") -> EventEnvelope:
    return EventEnvelope(f"o{n}", name, {"n": n})


async def test_browser_subscribes_over_sse_and_websocket_and_resumes() -> None:
    executable = chromium()
    from playwright.async_api import async_playwright

    hub = Broadcaster(history=100)
    realtime = RealtimeApp(hub, authorize=allow, retry_ms=200)
    site = Starlette(routes=[Route("/", page), Mount("/rt", app=realtime)])
    async with serve_asgi(site) as base, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=executable, args=ARGS, headless=True)
        try:
            tab = await browser.new_page()
            await tab.goto(base + "/")
            await wait_until(lambda: realtime.open_connections == 2, what="SSE + WebSocket")
            for n in range(1, 6):
                hub.publish(order(n))
            hub.publish(order(6, "invoice.paid"))  # filtered out by the pattern
            hub.publish(order(7))
            await tab.wait_for_function("window.sse.length >= 6 && window.ws.length >= 6")
            assert await tab.evaluate("window.sse") == [1, 2, 3, 4, 5, 7]
            assert await tab.evaluate("window.ws") == [1, 2, 3, 4, 5, 7]

            # The server drops every stream; events published before the browser reconnects
            # reach it on resume (EventSource sends Last-Event-ID by itself).
            assert hub.close_all() == 2
            for n in range(8, 11):
                hub.publish(order(n))
            await tab.wait_for_function("window.sse.length >= 9 && window.sseOpens >= 2")
            assert await tab.evaluate("window.sse") == [1, 2, 3, 4, 5, 7, 8, 9, 10]
            assert await tab.evaluate("window.resets") == 0
            assert await tab.locator("#log li").count() == 9
        finally:
            await browser.close()
