"""Helpers for the PostgreSQL integration tests (no tests here).

* the shared server (``tests.support.POSTGRES_URL``), isolated per test by a fresh schema
  that is dropped afterwards;
* a private PostgreSQL cluster on a free loopback port (initdb'd into a temporary directory,
  run as the ``postgres`` OS user) for tests that restart or stop the server, always shut
  down afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any
from uuid import uuid4

from conveyor.backends import factory_from_url
from conveyor.backends.postgres import PostgresFactory
from conveyor.backends.postgres.backend import PostgresBackend
from conveyor.domain.ids import new_job_id
from conveyor.domain.job import NewJob
from tests.support import POSTGRES_URL, in_ci, skip_or_fail, wait_until
from tests.support import require_server as require_url

URL = POSTGRES_URL
T = 1_700_000_000.0

__all__ = ["URL", "in_ci", "skip_or_fail", "wait_until"]


def require_server() -> None:
    require_url(URL)


def fresh_schema() -> str:
    return f"it_{uuid4().hex[:12]}"


def job(task: str = "tasks.work", queue: str = "default", **fields: Any) -> NewJob:
    fields.setdefault("id", new_job_id())
    fields.setdefault("payload", b"payload")
    return NewJob(task=task, queue=queue, **fields)


@asynccontextmanager
async def migrated_factory(url: str = URL, **options: Any) -> AsyncIterator[PostgresFactory]:
    """A factory over a fresh, migrated schema, dropped on exit."""
    options.setdefault("schema", fresh_schema())
    factory = factory_from_url(url, **options)
    assert isinstance(factory, PostgresFactory)
    await factory.migrate()
    try:
        yield factory
    finally:
        await factory.destroy()


@asynccontextmanager
async def client(factory: PostgresFactory) -> AsyncIterator[PostgresBackend]:
    backend = factory.create()
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()


# -- a private cluster ------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateCluster:
    """A throwaway PostgreSQL server on a loopback port (trust auth), controlled by pg_ctl."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.data = root / "data"
        self.port = port
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = list(args)
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, check=check, capture_output=True, text=True, timeout=120)

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.root} -c fsync=off"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "log"),
            "-w",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()


@contextmanager
def private_cluster() -> Iterator[PrivateCluster]:
    """Start a private cluster (skip when the PostgreSQL binaries or the OS user are missing)."""
    if shutil.which("initdb") is None or shutil.which("pg_ctl") is None:
        skip_or_fail("initdb/pg_ctl are not installed")
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            skip_or_fail("no 'postgres' OS user to run a private cluster as root")
            raise
    root = Path(tempfile.mkdtemp(prefix="conveyor-pg-"))
    if os.geteuid() == 0:
        os.chown(root, user.pw_uid, user.pw_gid)
    cluster = PrivateCluster(root, _free_port())
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


# -- a TCP proxy that can go silent ------------------------------------------------------------
class SilentProxy:
    """A loopback TCP proxy to the shared server. ``freeze()`` makes every connection open so
    far stop carrying bytes in both directions without closing it (a NAT or firewall that lost
    its state); connections opened afterwards work normally."""

    def __init__(self, upstream_port: int = 5432) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._generation = 0
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/test"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def freeze(self) -> None:
        self._generation += 1

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        generation = self._generation
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers += [writer, up_writer]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    if generation != self._generation:
                        await asyncio.Event().wait()  # frozen: swallow everything, forever
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        with contextlib.suppress(asyncio.CancelledError):  # the proxy is shutting down
            await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))


@asynccontextmanager
async def silent_proxy() -> AsyncIterator[SilentProxy]:
    proxy = SilentProxy()
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


# -- observing a waiter (instead of sleeping) -------------------------------------------------
def count_probes(backend: PostgresBackend) -> list[float]:
    """Record each completed ``wait_for_jobs`` probe of ``backend`` (its first check, and each
    re-check): a waiter whose probe came back is blocked until woken or its next poll."""
    probes: list[float] = []
    fetch = backend._fetchall

    async def counting(name: str, params: dict[str, Any], retry: str | None = None) -> Any:
        rows = await fetch(name, params, retry)
        if name == "wait_probe":
            probes.append(time.monotonic())
        return rows

    backend._fetchall = counting  # type: ignore[method-assign]
    return probes


async def blocked_waiter(
    backend: PostgresBackend, queues: list[str], timeout: float = 30.0
) -> asyncio.Task[None]:
    """``wait_for_jobs`` started in a task whose first check is done (it is blocked now, unless
    something woke it meanwhile)."""
    probes = count_probes(backend)
    task = asyncio.create_task(backend.wait_for_jobs(queues, timeout))
    await wait_until(lambda: probes or task.done(), 10, message="the waiter's first check")
    return task


async def lock_waiters(schema: str) -> int:
    """Sessions of ``schema``'s clients blocked on a lock now (seen by the server)."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(URL, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE %s",
            (f"%{schema}%",),
        )
        row = await cur.fetchone()
        return int(row[0]) if row else 0
