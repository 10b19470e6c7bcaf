"""End to end in a real headless Chromium (Debian's package, driven by Playwright): log in,
open every page, retry a dead letter, pause a schedule, watch a live update arrive.
Screenshots go to ``tests/web/screenshots/`` (kept as test artefacts, not committed)."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.domain.states import JobState
from conveyor.web import dashboard
from tests.contract._support import factory_spec, require_kind

from .apps import SECRET_CARD, build, populate
from .conftest import PASSWORD, config

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
SHOTS = Path(__file__).parent / "screenshots"

playwright_sync = pytest.importorskip("playwright.sync_api")
uvicorn = pytest.importorskip("uvicorn")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """The dashboard under uvicorn in a thread of its own (a real HTTP server)."""

    def __init__(self, app: Conveyor) -> None:
        self.port = _free_port()
        cfg = uvicorn.Config(
            dashboard(app, config(live_interval=0.2)),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
        )
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the dashboard server did not start")
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(params=["sqlite", "postgres"])
def served(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, Conveyor, dict[str, str]]]:
    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium is not installed (.ci/install-chromium installs it)")
    kind = str(request.param)
    require_kind(kind)
    url, options = factory_spec(kind, tmp_path)
    app = build(url, backend_options=options)

    async def setup() -> dict[str, str]:
        if kind == "postgres":
            await app.migrate()
        ids = await populate(app)
        await app.close()
        return ids

    ids = asyncio.run(setup())
    try:
        with Server(app) as base:
            yield base, app, ids
    finally:

        async def teardown() -> None:
            await app.close()
            await app.factory.destroy()

        asyncio.run(teardown())


def _shot(page: object, kind: str, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{kind}-{name}.png"), full_page=True)  # type: ignore[attr-defined]


def test_dashboard_in_a_real_browser(
    served: tuple[str, Conveyor, dict[str, str]], request: pytest.FixtureRequest
) -> None:
    base, app, ids = served
    kind = request.node.callspec.params["served"]
    with playwright_sync.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            # Any page sends an anonymous visitor to the login form, and back after it.
            page.goto(f"{base}/dead-letters")
            assert "/login" in page.url
            _shot(page, kind, "login")
            page.fill("input[name=username]", "ops")
            page.fill("input[name=password]", PASSWORD)
            page.click("button:has-text('Log in')")
            page.wait_for_url(re.compile(r".*/dead-letters$"))
            # Every page of the navigation, then a job's detail page.
            for link, name in [
                ("Overview", "overview"),
                ("Jobs", "jobs"),
                ("Dead letters", "dead-letters"),
                ("Schedules", "schedules"),
                ("Workers", "workers"),
            ]:
                page.click(f"header nav >> text={link}")
                page.wait_for_load_state()
                assert page.locator("h1").first.is_visible()
                _shot(page, kind, name)
            page.goto(f"{base}/jobs/{ids['completed']}")
            assert "•••" in page.content() and SECRET_CARD not in page.content()
            _shot(page, kind, "job")
            page.goto(f"{base}/jobs?state=failed")
            page.click(f"text={ids['failed']}")
            page.wait_for_url(re.compile(f".*/jobs/{ids['failed']}$"))
            assert "smtp refused" in page.content()
            _shot(page, kind, "failed-job")
            # Retry the dead letters of a group.
            page.goto(f"{base}/dead-letters")
            page.click("button:has-text('Retry all')")
            page.wait_for_selector(".flash.ok")
            assert "re-queued" in page.inner_text(".flash.ok")
            record = _get(app, ids["failed"])
            assert record is not None and record.state is JobState.QUEUED
            # Pause the schedule.
            page.goto(f"{base}/schedules")
            page.click("button:has-text('Pause')")
            page.wait_for_selector(".flash.ok")
            assert page.locator(".badge", has_text="paused").count() == 1
            assert _off_loop(lambda: _paused(app))
            _shot(page, kind, "schedule-paused")
            # A live update arrives without a reload.
            page.goto(f"{base}/")
            page.wait_for_selector("#live-status.on")
            marker = page.evaluate("window.__marker = Math.random()")
            _off_loop(lambda: _enqueue(app, 5))
            page.wait_for_selector("#main[data-updated]", state="attached", timeout=20_000)
            assert page.evaluate("window.__marker") == marker  # the same page: no reload
            _shot(page, kind, "overview-live")
            assert not [e for e in errors if "Content Security Policy" in e], errors
        finally:
            browser.close()


def _off_loop(make: Any) -> Any:
    """Run a coroutine to completion in a thread of its own (Playwright's sync API holds an
    event loop in this one)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result(30)


def _get(app: Conveyor, job_id: str) -> object:
    async def go() -> object:
        try:
            return await (await app.backend()).get_job(job_id)
        finally:
            await app.close()

    return _off_loop(go)


async def _paused(app: Conveyor) -> bool:
    try:
        return (await app.schedules.get("nightly-report")).paused
    finally:
        await app.close()


async def _enqueue(app: Conveyor, n: int) -> None:
    try:
        report = app.tasks["reports.build"]
        await app.enqueue_many([report.call(i) for i in range(n)])
    finally:
        await app.close()
