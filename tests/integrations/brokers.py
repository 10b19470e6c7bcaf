"""Private broker processes for restart tests, and reachability checks for the shared ones.

``nats-server`` (JetStream, file store) and ``mosquitto`` (persistence on) run on a free
loopback port with their data in a temporary directory; ``stop()`` and ``start()`` restart
them on the same port and data. RabbitMQ is too heavy to run privately: its tests use the
shared broker and close connections from the server side with ``rabbitmqctl``.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.integrations.servers import free_port


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_port(port: int, name: str) -> None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2.0):
            return
    except OSError:
        message = f"{name} at 127.0.0.1:{port} is unreachable"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)


def require_binary(path: str) -> None:
    if shutil.which(path) is None:
        message = f"{path} is not installed"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)


class PrivateBroker:
    """One broker process on a free loopback port; restartable on the same port and data."""

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        if kind == "mosquitto":
            conf = workdir / "mosquitto.conf"
            conf.write_text(
                f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                f"persistence true\npersistence_location {workdir}/\n"
                "max_inflight_messages 100\nmax_queued_messages 100000\n"
                # Run as root, mosquitto switches to user "mosquitto", which cannot write its
                # persistence file here; stay the current user.
                f"user {getpass.getuser()}\n"
            )

    @property
    def url(self) -> str:
        scheme = "nats" if self.kind == "nats-server" else "mqtt"
        return f"{scheme}://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        if self.kind == "nats-server":
            store = self.workdir / "js"
            return [
                "nats-server",
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-js",
                "-sd",
                str(store),
            ]
        return ["mosquitto", "-c", str(self.workdir / "mosquitto.conf")]

    def start(self) -> None:
        log = open(self.workdir / "broker.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.kind} exited: {(self.workdir / 'broker.log').read_text()}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.kind} did not listen on {self.port}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


async def wait_until(predicate: object, timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``predicate()`` until true, failing after ``timeout`` seconds."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def rabbit_close_connections(connection_name: str) -> int:
    """Close, from the server side, every RabbitMQ connection whose client-provided name is
    ``connection_name``; return how many were closed."""
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    closed = 0
    marker = f'"connection_name","{connection_name}"'
    for line in out.stdout.splitlines():
        if marker in line.replace(" ", ""):
            pid = line.split("\t", 1)[0].strip()
            subprocess.run(
                ["rabbitmqctl", "-q", "close_connection", pid, "test restart"],
                capture_output=True,
                timeout=60,
                check=True,
            )
            closed += 1
    return closed
