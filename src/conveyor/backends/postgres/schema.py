"""Schema management for the PostgreSQL backend: migrations, the version check, dropping.

The current schema is ``postgres/sql/schema.sql``; every change to it is also a numbered
file ``postgres/sql/migrations/NNNN_name.sql``. A fresh schema is built from ``schema.sql``;
an existing one is brought up to date by applying the migrations it lacks, in order. Both
paths run in one transaction under an advisory lock, so concurrent ``migrate`` calls (several
workers starting with ``auto_migrate=True``) apply each step exactly once. Applied versions
are recorded in ``<schema>.schema_version``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import psycopg

from conveyor.backends.postgres.errors import MIGRATE_HINT
from conveyor.backends.postgres.statements import SQL_DIR, quote_ident, read_sql, render
from conveyor.errors import SchemaVersionError

#: First key of the two-key advisory lock that serializes migrations (ASCII "conv").
MIGRATION_LOCK_KEY = 0x636F6E76

_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered schema change."""

    version: int
    name: str
    sql: str

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


@lru_cache(maxsize=1)
def migrations() -> tuple[Migration, ...]:
    """Every shipped migration, in version order."""
    folder = resources.files("conveyor.backends.postgres").joinpath(f"{SQL_DIR}/migrations")
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"PostgreSQL migrations must be numbered 1..n without gaps: {versions}")
    return tuple(found)


def latest_version() -> int:
    """The schema version this code needs."""
    return migrations()[-1].version


def _version_table(schema: str) -> str:
    return f"{quote_ident(schema)}.schema_version"


async def current_version(conn: psycopg.AsyncConnection[Any], schema: str) -> int | None:
    """The schema's recorded version, or ``None`` when the schema has not been created."""
    cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (_version_table(schema),))
    row = await cur.fetchone()
    if row is None or not row[0]:
        return None
    cur = await conn.execute(f"SELECT max(version) FROM {_version_table(schema)}")
    row = await cur.fetchone()
    return int(row[0]) if row is not None and row[0] is not None else 0


def check_version(version: int | None, schema: str) -> None:
    """Raise :class:`SchemaVersionError` unless ``version`` is the one this code needs."""
    latest = latest_version()
    if version is None:
        raise SchemaVersionError(f"the Conveyor schema {schema!r} does not exist; " + MIGRATE_HINT)
    if version > latest:
        raise SchemaVersionError(
            f"the Conveyor schema {schema!r} is at version {version}, newer than this version "
            f"of Conveyor understands ({latest}); upgrade Conveyor on this host"
        )
    if version < latest:
        raise SchemaVersionError(
            f"the Conveyor schema {schema!r} is at version {version} and this version of "
            f"Conveyor needs {latest}; " + MIGRATE_HINT
        )


async def migrate(conn: psycopg.AsyncConnection[Any], schema: str) -> list[str]:
    """Create or upgrade ``schema``; returns the labels of the migrations applied.

    ``conn`` must not be inside a transaction; this opens and commits its own.
    """
    quoted = quote_ident(schema)
    applied: list[str] = []
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (MIGRATION_LOCK_KEY, schema)
        )
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {_version_table(schema)} ("
            " version integer PRIMARY KEY,"
            " name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cur = await conn.execute(f"SELECT version FROM {_version_table(schema)}")
        done = {int(row[0]) for row in await cur.fetchall()}
        latest = latest_version()
        if done and max(done) > latest:
            check_version(max(done), schema)
        if not done:
            # A fresh schema: the current schema file in one go, every version recorded.
            await conn.execute(render(read_sql("schema.sql"), schema).encode())
            pending = list(migrations())
        else:
            pending = [m for m in migrations() if m.version not in done]
            for step in pending:
                await conn.execute(render(step.sql, schema).encode())
        for step in pending:
            await conn.execute(
                f"INSERT INTO {_version_table(schema)} (version, name) VALUES (%s, %s)",
                (step.version, step.name),
            )
            applied.append(step.label)
    return applied


async def apply_migrations_only(conn: psycopg.AsyncConnection[Any], schema: str) -> None:
    """Build ``schema`` by applying every migration in order (ignoring ``schema.sql``).

    For the test that proves ``schema.sql`` equals the sum of the migrations.
    """
    async with conn.transaction():
        await conn.execute(f"CREATE SCHEMA {quote_ident(schema)}")
        for step in migrations():
            await conn.execute(render(step.sql, schema).encode())


async def destroy(conn: psycopg.AsyncConnection[Any], schema: str) -> None:
    """Drop the schema and everything in it."""
    await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
