"""Key-value state for the SQLite backend (schedules): reads on the read connection,
compare-and-set inside the writer's ``BEGIN IMMEDIATE`` transaction."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any, Protocol

from conveyor.backends.capabilities.kv import KeyValueStore

if TYPE_CHECKING:
    from conveyor.backends.sqlite.engine import Engine


class _EngineSource(Protocol):
    async def engine(self) -> Engine: ...


class SQLiteKV(KeyValueStore):
    """Mixed into :class:`~conveyor.backends.sqlite.SQLiteBackend`."""

    factory: _EngineSource

    async def _kv_engine(self) -> Engine:
        return await self.factory.engine()

    async def kv_get(self, namespace: str, key: str) -> bytes | None:
        def read(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute(
                "SELECT value FROM conveyor_kv WHERE namespace = ? AND key = ?", (namespace, key)
            ).fetchone()
            return None if row is None else bytes(row[0])

        return await (await self._kv_engine()).read(read)

    async def kv_list(self, namespace: str) -> dict[str, bytes]:
        def read(conn: sqlite3.Connection) -> dict[str, bytes]:
            rows = conn.execute(
                "SELECT key, value FROM conveyor_kv WHERE namespace = ?", (namespace,)
            ).fetchall()
            return {str(k): bytes(v) for k, v in rows}

        return await (await self._kv_engine()).read(read)

    async def kv_swap(
        self, namespace: str, key: str, expected: bytes | None, value: bytes | None
    ) -> bool:
        def write(conn: sqlite3.Connection, _effects: Any) -> bool:
            row = conn.execute(
                "SELECT value FROM conveyor_kv WHERE namespace = ? AND key = ?", (namespace, key)
            ).fetchone()
            current = None if row is None else bytes(row[0])
            if current != expected:
                return False
            if value is None:
                conn.execute(
                    "DELETE FROM conveyor_kv WHERE namespace = ? AND key = ?", (namespace, key)
                )
            else:
                conn.execute(
                    "INSERT INTO conveyor_kv (namespace, key, value) VALUES (?, ?, ?) "
                    "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value",
                    (namespace, key, value),
                )
            return True

        return await (await self._kv_engine()).write(write)
