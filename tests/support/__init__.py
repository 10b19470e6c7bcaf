"""What the test suites share: waiting on conditions, CI detection, server addresses.

* :func:`wait_until` — poll a condition (sync or async) with a deadline instead of sleeping;
* :func:`in_ci` — whether the run is a CI run (``CI`` set): there a missing server fails the
  tests that need it instead of skipping them;
* :data:`POSTGRES_URL`, :data:`REDIS_URL` — the shared servers, from ``CONVEYOR_TEST_POSTGRES_URL``
  and ``CONVEYOR_TEST_REDIS_URL`` (loopback defaults), with :func:`server_of` and
  :func:`reachable` to tell whether one answers;
* :mod:`tests.support.servers` — private servers a test controls (Redis, PostgreSQL, a TCP
  proxy).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

POSTGRES_URL = os.environ.get(
    "CONVEYOR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("CONVEYOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

__all__ = [
    "POSTGRES_URL",
    "REDIS_URL",
    "in_ci",
    "reachable",
    "require_server",
    "server_of",
    "skip_or_fail",
    "wait_until",
    "wait_until_sync",
]


def in_ci() -> bool:
    """Whether this is a CI run (``CI`` set to anything but empty, 0, false, no)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_or_fail(message: str) -> None:
    """Skip the calling test (a missing server is no failure of the code) — but fail it in
    CI, where every server must be there."""
    import pytest

    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


def require_server(url: str) -> None:
    """Skip (locally) or fail (in CI) when the server ``url`` points at does not answer."""
    host, port = server_of(url)
    if not reachable(host, port):
        skip_or_fail(f"the server at {host}:{port} is unreachable")


def server_of(url: str) -> tuple[str, int]:
    """The host and port a store URL points at."""
    parts = urlsplit(url)
    default = 5432 if parts.scheme.startswith("postgres") else 6379
    return parts.hostname or "127.0.0.1", parts.port or default


@functools.cache
def reachable(host: str, port: int) -> bool:
    """Whether something accepts TCP connections there (asked once per run)."""
    try:
        with socket.create_connection((host, port), timeout=2.0):
            return True
    except OSError:
        return False


async def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    *,
    interval: float = 0.05,
    message: str = "the condition",
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy; return that.

    Raises ``AssertionError`` naming ``message`` when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(interval)  # a poll interval; the deadline bounds the wait


def wait_until_sync(
    predicate: Callable[[], Any],
    timeout: float,
    *,
    interval: float = 0.05,
    message: str = "the condition",
) -> Any:
    """:func:`wait_until` for code without an event loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)  # a poll interval; the deadline bounds the wait
