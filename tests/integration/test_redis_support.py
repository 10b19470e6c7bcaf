"""Helpers for the Redis integration tests (no tests here).

* the shared server (``tests.support.REDIS_URL``), isolated per test by a fresh key prefix;
* private ``redis-server`` processes on free loopback ports (for restarts, passwords, eviction
  policies, command counting and memory measurements), always shut down afterwards.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from uuid import uuid4

import redis.asyncio as aioredis

from conveyor.backends.redis import RedisFactory
from tests.support import REDIS_URL, in_ci, require_server, skip_or_fail, wait_until

SHARED_URL = REDIS_URL

__all__ = ["SHARED_URL", "in_ci", "wait_until"]


def require_shared_server() -> None:
    require_server(SHARED_URL)


def require_redis_server_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        skip_or_fail("redis-server is not installed")
    assert path is not None
    return path


def fresh_prefix() -> str:
    return f"it{uuid4().hex[:12]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """A private ``redis-server`` on a free loopback port, with its data in ``directory``."""

    def __init__(self, directory: Path, *args: str) -> None:
        self.binary = require_redis_server_binary()
        self.directory = directory
        self.port = free_port()
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, **kwargs: Any) -> aioredis.Redis:
        return aioredis.Redis(host="127.0.0.1", port=self.port, **kwargs)

    def _spawn(self) -> None:
        cmd = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "no",
            *self.args,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.directory
        )

    async def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._spawn()

        async def accepting() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"redis-server exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                return False

        await wait_until(accepting, timeout=10.0, interval=0.01)

    def kill(self) -> None:
        """``kill -9``: no shutdown hooks, no final save."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None


@asynccontextmanager
async def private_server(directory: Path, *args: str) -> AsyncIterator[RedisServer]:
    server = RedisServer(directory, *args)
    await server.start()
    try:
        yield server
    finally:
        server.stop()


async def command_calls(client: aioredis.Redis) -> dict[str, int]:
    """``INFO commandstats`` as ``{command: calls}``."""
    stats: dict[str, Any] = await client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def calls_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def crc16(data: bytes) -> int:
    """CRC16/XMODEM, the hash Redis Cluster uses for key slots."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def key_slot(key: bytes) -> int:
    """The Redis Cluster slot of ``key`` (honouring ``{hash tags}``)."""
    start = key.find(b"{")
    if start != -1:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return crc16(key) % 16384


def factory(url: str = SHARED_URL, **options: Any) -> RedisFactory:
    options.setdefault("prefix", fresh_prefix())
    return RedisFactory(url, **options)
