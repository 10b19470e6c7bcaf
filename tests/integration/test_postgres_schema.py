"""PostgreSQL schema management: migrations, the version check, and clear errors."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any
from uuid import uuid4

import psycopg
import pytest

from conveyor.backends import factory_from_url
from conveyor.backends.postgres import PostgresFactory
from conveyor.backends.postgres.schema import apply_migrations_only, latest_version, migrations
from conveyor.errors import SchemaVersionError, StorageUnavailableError

try:
    from .test_postgres_support import URL, client, fresh_schema, migrated_factory, require_server
except ImportError:  # tests/integration is not a package
    from test_postgres_support import (  # type: ignore[no-redef]
        URL,
        client,
        fresh_schema,
        migrated_factory,
        require_server,
    )

pytestmark = pytest.mark.usefixtures("server")


@pytest.fixture
def server() -> None:
    require_server()


async def catalog(conn: psycopg.AsyncConnection[Any], schema: str) -> dict[str, Any]:
    """Everything about a schema's tables a migration could change, schema name elided."""

    async def rows(sql: str) -> list[tuple[Any, ...]]:
        cur = await conn.execute(sql, {"s": schema})
        return [
            tuple(str(v).replace(f'"{schema}".', "S.").replace(f"{schema}.", "S.") for v in r)
            for r in await cur.fetchall()
        ]

    return {
        "columns": await rows(
            """SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
                      a.attnotnull, pg_get_expr(d.adbin, d.adrelid), co.collname, a.attidentity
               FROM pg_attribute a
               JOIN pg_class c ON c.oid = a.attrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
               LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
               LEFT JOIN pg_collation co ON co.oid = a.attcollation
                    AND a.attcollation <> 100
               WHERE n.nspname = %(s)s AND a.attnum > 0 AND NOT a.attisdropped
                 AND c.relname NOT LIKE 'schema_version%%'
               ORDER BY 1, 2"""
        ),
        "relations": await rows(
            """SELECT c.relname, c.relkind, coalesce(array_to_string(c.reloptions, ','), '')
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = %(s)s AND c.relname NOT LIKE 'schema_version%%'
               ORDER BY 1"""
        ),
        "indexes": await rows(
            """SELECT indexname, indexdef FROM pg_indexes
               WHERE schemaname = %(s)s AND tablename <> 'schema_version' ORDER BY 1"""
        ),
        "constraints": await rows(
            """SELECT cl.relname, con.conname, pg_get_constraintdef(con.oid)
               FROM pg_constraint con
               JOIN pg_class cl ON cl.oid = con.conrelid
               JOIN pg_namespace n ON n.oid = cl.relnamespace
               WHERE n.nspname = %(s)s AND cl.relname <> 'schema_version'
               ORDER BY 1, 2"""
        ),
    }


async def test_schema_file_equals_all_migrations_applied_in_order() -> None:
    fresh, stepped = fresh_schema(), fresh_schema()
    factory = factory_from_url(URL, schema=fresh)
    async with await psycopg.AsyncConnection.connect(URL, autocommit=True) as conn:
        try:
            assert await factory.migrate() == [m.label for m in migrations()]
            await apply_migrations_only(conn, stepped)
            a, b = await catalog(conn, fresh), await catalog(conn, stepped)
            assert a["columns"] and a["indexes"]
            assert a == b
        finally:
            await factory.destroy()
            await conn.execute(f'DROP SCHEMA IF EXISTS "{stepped}" CASCADE')


async def test_migrate_records_versions_and_is_idempotent() -> None:
    async with migrated_factory() as factory:
        assert await factory.migrate() == []
        async with await psycopg.AsyncConnection.connect(URL, autocommit=True) as conn:
            cur = await conn.execute(
                f'SELECT version, name FROM "{factory.schema}".schema_version ORDER BY 1'
            )
            assert await cur.fetchall() == [(m.version, m.name) for m in migrations()]


async def test_concurrent_migrations_apply_each_step_once() -> None:
    schema = fresh_schema()
    factories = [factory_from_url(URL, schema=schema) for _ in range(4)]
    try:
        results = await asyncio.gather(*(f.migrate() for f in factories))
        applied = [r for r in results if r]
        assert applied == [[m.label for m in migrations()]]
    finally:
        await factories[0].destroy()


async def test_open_refuses_a_newer_schema() -> None:
    async with migrated_factory() as factory:
        async with await psycopg.AsyncConnection.connect(URL, autocommit=True) as conn:
            await conn.execute(
                f'INSERT INTO "{factory.schema}".schema_version (version, name) '
                "VALUES (%s, 'from_the_future')",
                (latest_version() + 1,),
            )
        backend = factory.create()
        with pytest.raises(SchemaVersionError, match="newer than this version"):
            await backend.open()
        with pytest.raises(SchemaVersionError, match="newer"):
            await factory.migrate()


async def test_open_without_a_schema_says_to_migrate() -> None:
    factory = factory_from_url(URL, schema=fresh_schema())
    backend = factory.create()
    with pytest.raises(SchemaVersionError, match="conveyor db migrate") as info:
        await backend.open()
    assert "auto_migrate=True" in str(info.value)


async def test_open_with_an_older_schema_says_to_migrate() -> None:
    async with migrated_factory() as factory:
        async with await psycopg.AsyncConnection.connect(URL, autocommit=True) as conn:
            await conn.execute(f'DELETE FROM "{factory.schema}".schema_version')
            await conn.execute(f"INSERT INTO \"{factory.schema}\".schema_version VALUES (0, 'x')")
        with pytest.raises(SchemaVersionError, match="needs"):
            await factory.create().open()


async def test_auto_migrate_creates_the_schema_at_open() -> None:
    factory = factory_from_url(URL, schema=fresh_schema(), auto_migrate=True)
    try:
        async with client(factory) as backend:  # type: ignore[arg-type]
            assert await backend.count_jobs() == []
    finally:
        await factory.destroy()


async def test_destroy_drops_the_schema() -> None:
    async with migrated_factory() as factory:
        await factory.destroy()
        async with await psycopg.AsyncConnection.connect(URL, autocommit=True) as conn:
            cur = await conn.execute(
                "SELECT count(*) FROM pg_namespace WHERE nspname = %s", (factory.schema,)
            )
            assert await cur.fetchone() == (0,)


async def test_a_schema_name_that_needs_quoting_works() -> None:
    schema = f'Odd "name" {uuid4().hex[:6]}; DROP'
    async with migrated_factory(schema=schema) as factory, client(factory) as backend:
        assert await backend.count_jobs() == []


# -- bad input: one clear line ------------------------------------------------------------------
async def test_a_missing_database_is_named_with_the_fix() -> None:
    factory = factory_from_url("postgresql://postgres@127.0.0.1:5432/no_such_db_x", schema="s")
    with pytest.raises(StorageUnavailableError) as info:
        await factory.create().open()
    message = str(info.value)
    assert "no_such_db_x" in message and "does not exist" in message and "createdb" in message
    assert "\n" not in message
    with pytest.raises(StorageUnavailableError, match="does not exist"):
        await factory.migrate()


async def test_an_unknown_user_is_named() -> None:
    factory = factory_from_url("postgresql://nobody_here_x:pw@127.0.0.1:5432/test")
    with pytest.raises(StorageUnavailableError, match="nobody_here_x") as info:
        await factory.create().open()
    assert "\n" not in str(info.value)


async def test_an_unreachable_server_is_named() -> None:
    factory = factory_from_url("postgresql://postgres@127.0.0.1:1/test", timeout=2)
    with pytest.raises(StorageUnavailableError, match="not reachable") as info:
        await factory.create().open()
    assert "127.0.0.1:1" in str(info.value)


async def test_a_malformed_url_is_reported() -> None:
    factory = factory_from_url("postgresql://postgres@127.0.0.1:notaport/test")
    with pytest.raises(StorageUnavailableError):
        await factory.create().open()


async def test_missing_create_permission_is_reported_with_the_fix() -> None:
    role = f"conveyor_noperm_{uuid4().hex[:8]}"
    async with await psycopg.AsyncConnection.connect(URL, autocommit=True) as admin:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN')
        await admin.execute(f'REVOKE CREATE ON DATABASE test FROM "{role}"')
        try:
            factory = factory_from_url(
                f"postgresql://{role}@127.0.0.1:5432/test", schema=fresh_schema()
            )
            with pytest.raises(StorageUnavailableError, match="permission denied") as info:
                await factory.migrate()
            assert "CREATE" in str(info.value)
        finally:
            await admin.execute(f'DROP ROLE "{role}"')


def test_a_missing_psycopg_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['psycopg'] = None; sys.modules['psycopg_pool'] = None\n"
        "from conveyor.backends import factory_from_url\n"
        "from conveyor.errors import MissingDependencyError\n"
        "try:\n"
        "    factory_from_url('postgresql://x@localhost/db')\n"
        "except MissingDependencyError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'conveyor[postgres]'" in out.stdout


def test_describe_hides_the_password() -> None:
    factory = factory_from_url("postgresql://app:s3cret@db.example:5432/app", schema="jobs")
    assert isinstance(factory, PostgresFactory)
    info = factory.describe()
    assert "s3cret" not in str(info)
    assert info["schema"] == "jobs" and info["schema_version"] == latest_version()
