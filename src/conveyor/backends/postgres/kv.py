"""Key-value state for the PostgreSQL backend (schedules): one row per key, compare-and-set
as a single conditional statement."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from psycopg.sql import SQL, Identifier

from conveyor.backends.capabilities.kv import KeyValueStore

if TYPE_CHECKING:
    from conveyor.backends.postgres.client import Conn


class PostgresKV(KeyValueStore):
    """Mixed into :class:`~conveyor.backends.postgres.backend.PostgresBackend`."""

    schema: str

    if TYPE_CHECKING:  # provided by PostgresClient, which comes after this mixin

        async def _run(self, op: Any, retry: str | None = None) -> Any: ...

    def _kv_table(self) -> Identifier:
        return Identifier(self.schema, "kv")

    async def kv_get(self, namespace: str, key: str) -> bytes | None:
        query = SQL("SELECT value FROM {} WHERE namespace = %s AND key = %s").format(
            self._kv_table()
        )

        async def op(conn: Conn) -> bytes | None:
            cur = await conn.execute(query, (namespace, key))
            row = await cur.fetchone()
            return None if row is None else bytes(row[0])

        result: bytes | None = await self._run(op, "read")
        return result

    async def kv_list(self, namespace: str) -> dict[str, bytes]:
        query = SQL("SELECT key, value FROM {} WHERE namespace = %s").format(self._kv_table())

        async def op(conn: Conn) -> dict[str, bytes]:
            cur = await conn.execute(query, (namespace,))
            return {str(k): bytes(v) for k, v in await cur.fetchall()}

        result: dict[str, bytes] = await self._run(op, "read")
        return result

    async def kv_swap(
        self, namespace: str, key: str, expected: bytes | None, value: bytes | None
    ) -> bool:
        table = self._kv_table()
        if expected is None and value is None:
            query = SQL("SELECT NOT EXISTS (SELECT 1 FROM {} WHERE namespace = %s AND key = %s)")
            params: tuple[Any, ...] = (namespace, key)
        elif expected is None:
            query = SQL(
                "INSERT INTO {} (namespace, key, value) VALUES (%s, %s, %s) "
                "ON CONFLICT DO NOTHING RETURNING true"
            )
            params = (namespace, key, value)
        elif value is None:
            query = SQL(
                "DELETE FROM {} WHERE namespace = %s AND key = %s AND value = %s RETURNING true"
            )
            params = (namespace, key, expected)
        else:
            query = SQL(
                "UPDATE {} SET value = %s WHERE namespace = %s AND key = %s AND value = %s "
                "RETURNING true"
            )
            params = (value, namespace, key, expected)
        statement = query.format(table)

        async def op(conn: Conn) -> bool:
            cur = await conn.execute(statement, params)
            row = await cur.fetchone()
            return bool(row and row[0])

        result: bool = await self._run(op, "stale")
        return result
