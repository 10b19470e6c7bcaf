"""PgQueuer: ``pgq run bench.apps.pgqueuer_app:main`` (asyncpg driver, as its README shows).

The schema comes from ``PGQUEUER_SCHEMA``, which the benchmark sets to the cell's schema.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from pgqueuer import PgQueuer
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job

from bench.apps import concurrency, setting
from bench.recorder import echo as _echo
from bench.recorder import record


@asynccontextmanager
async def main() -> AsyncIterator[PgQueuer]:
    """The factory ``pgq run`` calls (PgQueuer 1.6 wants an async context manager)."""
    connection = await asyncpg.connect(setting("URL"))
    pgq = PgQueuer(AsyncpgDriver(connection))

    # Concurrency 1 is the entrypoint's limit (pgq run needs max tasks >= 2 x batch size).
    @pgq.entrypoint("noop", concurrency_limit=1 if concurrency() == 1 else 0)
    async def noop(job: Job) -> None:
        record(float(job.payload or b"0"))

    @pgq.entrypoint("echo")
    async def echo(job: Job) -> None:
        _echo(job.payload)

    @pgq.entrypoint("blob")
    async def blob(job: Job) -> None:
        """Carries a payload; never run."""

    try:
        yield pgq
    finally:
        await connection.close()
