"""The pytest plugin (entry point ``conveyor``): fixtures for testing your own app.

Point it at your app once, in ``pytest.ini``/``pyproject.toml``::

    [tool.pytest.ini_options]
    conveyor_app = "myproject.tasks:app"

or define a ``conveyor_app`` fixture in ``conftest.py`` returning the app. Then:

- ``conveyor``: a :class:`~conveyor.contrib.pytest.Harness` — your app rebound to
  ``memory://`` on a fake clock for the test, given back its store afterwards;
- ``conveyor_clock``: that :class:`~conveyor.domain.clock.FakeClock`;
- ``conveyor_drain``: ``await conveyor_drain()`` runs every job, advancing the clock through
  delays and retries.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from conveyor.app import Conveyor
from conveyor.contrib.pytest.harness import Harness
from conveyor.domain.clock import FakeClock
from conveyor.worker.worker import Worker


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "conveyor_app",
        "The Conveyor app the conveyor fixtures test, as 'module:attribute'",
        default="",
    )


def load_app(spec: str) -> Conveyor:
    """``module:attribute`` to the app it names."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise pytest.UsageError(f"conveyor_app must look like 'module:attribute', not {spec!r}")
    app = getattr(importlib.import_module(module_name), attr, None)
    if not isinstance(app, Conveyor):
        raise pytest.UsageError(f"conveyor_app {spec!r} is not a conveyor.Conveyor app")
    return app


@pytest.fixture
def conveyor_app(request: pytest.FixtureRequest) -> Conveyor:
    """Your app, from the ``conveyor_app`` ini option (override this fixture to build it)."""
    spec = str(request.config.getini("conveyor_app") or "")
    if not spec:
        raise pytest.UsageError(
            "set conveyor_app = 'module:attribute' in your pytest configuration, or define a "
            "conveyor_app fixture returning your app"
        )
    return load_app(spec)


@pytest.fixture
def conveyor_clock() -> FakeClock:
    """The fake clock the ``conveyor`` harness runs on."""
    return FakeClock()


try:  # strict-mode pytest-asyncio needs its own decorator for async fixtures
    from pytest_asyncio import fixture as async_fixture
except ImportError:  # pragma: no cover - anyio users
    async_fixture = pytest.fixture  # type: ignore[assignment]


@async_fixture
async def conveyor(conveyor_app: Conveyor, conveyor_clock: FakeClock) -> AsyncIterator[Harness]:
    """Your app on ``memory://`` and the fake clock for this test."""
    harness = Harness(conveyor_app, conveyor_clock)
    try:
        yield harness
    finally:
        await harness.close()


@pytest.fixture
def conveyor_drain(conveyor: Harness) -> Callable[..., Awaitable[Worker]]:
    """``await conveyor_drain()``: run every job, advancing the clock through delays."""

    async def drain(**options: Any) -> Worker:
        return await conveyor.drain(**options)

    return drain
