"""Building backends for the contract suite, and helpers its tests share.

Every kind is built through :func:`conveyor.backends.factory_from_url`, isolated per test (a
fresh SQLite file, PostgreSQL schema or Redis key prefix). A kind whose module is not importable
yet is skipped; a kind whose server is unreachable is skipped locally and fails under ``CI``.

``CONVEYOR_TEST_POSTGRES_VIA=pgbouncer`` sends the ``postgres`` kind through a private
PgBouncer in transaction pooling mode (started once per test process in front of the shared
server; see ``tests/integration/test_pgbouncer.py``, which runs the suite that way).
``CONVEYOR_TEST_REDIS_VIA=cluster`` runs the ``redis`` kind on a private Redis Cluster (three
masters, one replica each, started once per test process; see
``tests/integration/test_redis_cluster.py``).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import replace
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from conveyor.backends import BackendFactory, factory_from_url
from conveyor.domain.ids import new_job_id
from conveyor.domain.job import ClaimedJob, ErrorInfo, JobRecord, LogEntry, NewJob
from tests.support import POSTGRES_URL, REDIS_URL, in_ci, reachable, server_of

KINDS = ("memory", "sqlite", "postgres", "redis")
REAL_KINDS = ("sqlite", "postgres", "redis")
_SERVERS = {"postgres": server_of(POSTGRES_URL), "redis": server_of(REDIS_URL)}

#: The base time of the fake clock every contract test uses (exact in binary and in µs).
T = 1_700_000_000.0


def require_kind(kind: str) -> None:
    """Skip the calling test when ``kind`` cannot run here (fail instead under ``CI`` when its
    server is unreachable)."""
    if kind != "memory":
        try:
            importlib.import_module(f"conveyor.backends.{kind}")
        except ImportError as exc:  # ModuleNotFoundError included
            pytest.skip(f"conveyor.backends.{kind} is not importable yet: {exc}")
    server = _SERVERS.get(kind)
    if server is not None and not reachable(*server):
        message = f"{kind} server at {server[0]}:{server[1]} is unreachable"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)


_PGBOUNCER: list[Any] = []


def postgres_url() -> str:
    """The URL of the ``postgres`` kind: the shared server, or a private PgBouncer in front of
    it when ``CONVEYOR_TEST_POSTGRES_VIA=pgbouncer``."""
    if os.environ.get("CONVEYOR_TEST_POSTGRES_VIA", "") != "pgbouncer":
        return POSTGRES_URL
    if not _PGBOUNCER:
        import atexit

        from tests.support.servers import PgBouncer

        bouncer = PgBouncer(5432).start()
        atexit.register(bouncer.stop)
        _PGBOUNCER.append(bouncer)
    return str(_PGBOUNCER[0].url("test"))


_CLUSTER: list[Any] = []


def redis_url() -> str:
    """The URL of the ``redis`` kind: the shared server, or a private Redis Cluster when
    ``CONVEYOR_TEST_REDIS_VIA=cluster``."""
    if os.environ.get("CONVEYOR_TEST_REDIS_VIA", "") != "cluster":
        return REDIS_URL
    if not _CLUSTER:
        import atexit
        import tempfile

        from tests.support.servers import RedisCluster

        directory = Path(tempfile.mkdtemp(prefix="conveyor-cluster-"))
        cluster = RedisCluster(directory, 3, 1).start()
        atexit.register(cluster.stop)
        _CLUSTER.append(cluster)
    return str(_CLUSTER[0].url)


def factory_spec(kind: str, directory: Path, name: str | None = None) -> tuple[str, dict[str, Any]]:
    """The URL and options of a fresh, isolated store of ``kind`` (``name`` picks the file,
    schema or key prefix; a random one by default)."""
    if kind == "sqlite":
        return f"sqlite:///{directory}/{'jobs' if name is None else name}.db", {}
    name = name or uuid4().hex[:12]
    if kind == "memory":
        return "memory://", {}
    if kind == "postgres":
        return postgres_url(), {"schema": f"t_{name}"}
    if kind == "redis":
        return redis_url(), {"prefix": f"t{name}"}
    raise ValueError(f"unknown backend kind {kind!r}")


def make_factory(kind: str, directory: Path, name: str | None = None) -> BackendFactory:
    """A factory of ``kind`` over a fresh, isolated store (not yet migrated)."""
    url, options = factory_spec(kind, directory, name)
    return factory_from_url(url, **options)


async def open_factory(kind: str, directory: Path, name: str | None = None) -> BackendFactory:
    """:func:`make_factory`, migrated when the kind has a schema to create."""
    factory = make_factory(kind, directory, name)
    if kind == "postgres":
        await factory.migrate()
    return factory


def job(
    task: str = "tasks.work",
    queue: str = "default",
    payload: bytes = b"payload",
    **fields: Any,
) -> NewJob:
    """A :class:`NewJob` with a fresh sortable id (ids made later sort later)."""
    fields.setdefault("id", new_job_id())
    return NewJob(task=task, queue=queue, payload=payload, **fields)


def error(
    code: str = "error", message: str = "boom", *, attempt: int = 1, at: float = T
) -> ErrorInfo:
    return ErrorInfo(
        code=code,
        type="RuntimeError",
        message=message,
        traceback="Traceback (most recent call last):\n  ...\nRuntimeError: " + message,
        attempt=attempt,
        at=at,
    )


def approx_t(value: float) -> Any:
    """Equality for stored times, to the millisecond (stores keep µs or float text)."""
    return pytest.approx(value, abs=1e-3)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def normalized(record: JobRecord, *, keep_fence: bool = False) -> JobRecord:
    """A record with every time rounded to the millisecond and, unless asked, the fence zeroed
    (its value is backend-specific: the protocol only promises that it grows)."""
    return replace(
        record,
        run_at=round(record.run_at, 3),
        created_at=round(record.created_at, 3),
        lease_until=_ms(record.lease_until),
        timeout=_ms(record.timeout),
        expires_at=_ms(record.expires_at),
        started_at=_ms(record.started_at),
        finished_at=_ms(record.finished_at),
        error=None if record.error is None else replace(record.error, at=round(record.error.at, 3)),
        errors=tuple(replace(e, at=round(e.at, 3)) for e in record.errors),
        logs=tuple(replace(e, at=round(e.at, 3)) for e in record.logs),
        fence=record.fence if keep_fence else 0,
    )


def normalized_claim(claimed: ClaimedJob, *, keep_fence: bool = False) -> ClaimedJob:
    return replace(
        claimed,
        lease_until=round(claimed.lease_until, 3),
        created_at=round(claimed.created_at, 3),
        timeout=_ms(claimed.timeout),
        fence=claimed.fence if keep_fence else 0,
    )


def log_entry(message: str, *, at: float = T, attempt: int = 1) -> LogEntry:
    return LogEntry(at=at, level="info", message=message, attempt=attempt, extra={"k": [1, "v"]})
