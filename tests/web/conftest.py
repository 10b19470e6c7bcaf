"""Fixtures of the dashboard tests: an app on each backend kind, its dashboard as an ASGI app,
and httpx clients (in-process ASGI transport) with and without credentials."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor import Conveyor
from conveyor.web import DashboardConfig, dashboard, hash_password
from tests.contract._support import KINDS, factory_spec, require_kind

from .apps import build, populate

PASSWORD = "correct horse battery"
HASH = hash_password(PASSWORD)
BASIC = {"Authorization": "Basic " + base64.b64encode(f"ops:{PASSWORD}".encode()).decode()}
REDACT = {"billing.charge": ["card", "token"]}


def config(**changes: Any) -> DashboardConfig:
    base: dict[str, Any] = {
        "users": {"ops": HASH},
        "secret_key": "test-secret",
        "redact": REDACT,
        "live_interval": 0.2,
    }
    return DashboardConfig(**{**base, **changes})


async def make_app(kind: str, tmp_path: Path) -> Conveyor:
    url, options = factory_spec(kind, tmp_path)
    app = build(url, backend_options=options)
    if kind == "postgres":
        await app.migrate()
    return app


@pytest.fixture(params=KINDS, ids=list(KINDS))
def kind(request: pytest.FixtureRequest) -> str:
    require_kind(request.param)
    return str(request.param)


@pytest.fixture
async def app(kind: str, tmp_path: Path) -> AsyncIterator[Conveyor]:
    app = await make_app(kind, tmp_path)
    try:
        yield app
    finally:
        await app.close()
        await app.factory.destroy()


@pytest.fixture
async def ids(app: Conveyor) -> dict[str, str]:
    return await populate(app)


def client(asgi: Any, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=asgi), base_url="http://dash.test", headers=headers
    )


@pytest.fixture
async def api(app: Conveyor, ids: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with client(dashboard(app, config()), **BASIC) as c:
        yield c
