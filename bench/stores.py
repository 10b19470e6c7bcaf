"""The store each benchmark cell runs against: isolated, measured, cleaned up.

* Redis: one database number reserved for the benchmark (``BENCH_REDIS_DB``, 15 by default) on
  the shared server. Some peers cannot be given a key prefix, so each cell starts and ends with
  ``FLUSHDB`` *of that database only* (never ``FLUSHALL``); a marker key guards against flushing
  a database somebody else has started to use.
* PostgreSQL: a database ``bench`` and a fresh schema per cell, dropped afterwards. Peers that
  take no schema option get it through ``search_path`` in the connection string.
* SQLite: a fresh file per cell.

Footprints (for memory per queued job): Redis ``MEMORY USAGE … SAMPLES 0`` summed over every key
of the database; PostgreSQL ``pg_total_relation_size`` (heap, indexes, TOAST) summed over the
schema's tables; SQLite the file's size after a ``wal_checkpoint(TRUNCATE)``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from typing import Any
from urllib.parse import quote

MARKER = "conveyor-bench:owner"


class Store:
    """One cell's slice of a store."""

    backend = ""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.ns: str = spec["ns"]

    def env(self) -> dict[str, str]:
        """What the benchmark apps read (``BENCH_URL``, ``BENCH_NS``, …)."""
        return {"BENCH_BACKEND": self.backend, "BENCH_URL": self.url, "BENCH_NS": self.ns}

    @property
    def url(self) -> str:
        raise NotImplementedError

    def prepare(self) -> None:
        raise NotImplementedError

    def cleanup(self) -> None:
        raise NotImplementedError

    def footprint(self) -> int:
        raise NotImplementedError


class RedisStore(Store):
    backend = "redis"

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        import redis

        self.client = redis.Redis.from_url(self.url)

    @property
    def url(self) -> str:
        return str(self.spec["redis_url"])

    def _flush(self) -> None:
        keys = int(self.client.dbsize())
        if keys and not self.client.exists(MARKER):
            raise RuntimeError(
                f"Redis database {self.url} holds {keys} keys the benchmark did not write; "
                "pick a free database with BENCH_REDIS_DB"
            )
        self.client.flushdb()
        self.client.set(MARKER, "1")

    def prepare(self) -> None:
        self._flush()

    def cleanup(self) -> None:
        self._flush()
        self.client.close()

    def footprint(self) -> int:
        keys = [k for k in self.client.scan_iter(count=1000) if k != MARKER.encode()]
        total = 0
        for start in range(0, len(keys), 1000):
            pipe = self.client.pipeline(transaction=False)
            for key in keys[start : start + 1000]:
                pipe.memory_usage(key, samples=0)
            total += sum(int(v or 0) for v in pipe.execute())
        return total


class PostgresStore(Store):
    backend = "postgres"

    @property
    def url(self) -> str:
        return str(self.spec["pg_url"])

    @property
    def search_path_url(self) -> str:
        """The URL with ``search_path`` set to the cell's schema (for peers without a schema
        option)."""
        sep = "&" if "?" in self.url else "?"
        return f"{self.url}{sep}options={quote(f'-csearch_path={self.ns}')}"

    def env(self) -> dict[str, str]:
        return {**super().env(), "BENCH_URL_SEARCH_PATH": self.search_path_url}

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description is not None else []

    def prepare(self) -> None:
        self._execute(f'DROP SCHEMA IF EXISTS "{self.ns}" CASCADE')
        self._execute(f'CREATE SCHEMA "{self.ns}"')

    def cleanup(self) -> None:
        self._execute(f'DROP SCHEMA IF EXISTS "{self.ns}" CASCADE')

    def footprint(self) -> int:
        rows = self._execute(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind IN ('r', 'm', 'p')",
            (self.ns,),
        )
        return int(rows[0][0])


class SQLiteStore(Store):
    backend = "sqlite"

    @property
    def path(self) -> str:
        return os.path.join(str(self.spec["sqlite_dir"]), f"{self.ns}.db")

    @property
    def url(self) -> str:
        return f"sqlite:///{self.path}"

    def env(self) -> dict[str, str]:
        return {**super().env(), "BENCH_SQLITE_PATH": self.path}

    def _remove(self) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path + suffix)

    def prepare(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._remove()

    def cleanup(self) -> None:
        self._remove()

    def footprint(self) -> int:
        if not os.path.exists(self.path):
            return 0
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            (pages,) = conn.execute("PRAGMA page_count").fetchone()
            (size,) = conn.execute("PRAGMA page_size").fetchone()
            return int(pages) * int(size)
        finally:
            conn.close()


STORES: dict[str, type[Store]] = {
    "redis": RedisStore,
    "postgres": PostgresStore,
    "sqlite": SQLiteStore,
}


def store_for(spec: dict[str, Any]) -> Store:
    return STORES[spec["backend"]](spec)
