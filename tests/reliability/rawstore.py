"""Raw access to a store, bypassing Conveyor: corrupt a stored field, read a job's state.

The corruption fuzz writes straight into what the worker reads back (SQLite columns,
PostgreSQL columns, Redis hash fields and payload strings) and reads states without Conveyor's
record parsers (which a corrupt record can break).
"""

from __future__ import annotations

import sqlite3
from typing import Any

import psycopg
import redis

from conveyor.backends.redis.codec import key_base

from .harness import Rig


def _sqlite(rig: Rig) -> sqlite3.Connection:
    path = rig.url.removeprefix("sqlite:///")
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    return conn


def _pg_url(rig: Rig) -> str:
    return rig.url


def _schema(rig: Rig) -> str:
    return '"' + rig.options["schema"].replace('"', '""') + '"'


def _redis(rig: Rig) -> redis.Redis:
    return redis.Redis.from_url(rig.url)


def _base(rig: Rig) -> str:
    return key_base(rig.options["prefix"])


def corrupt(rig: Rig, job_id: str, field: str, value: Any) -> None:
    """Overwrite one stored field of a job (a column, or a Redis hash field; ``payload`` is
    the payload wherever it lives)."""
    if rig.kind == "sqlite":
        with _sqlite(rig) as conn:
            cur = conn.execute(
                f"UPDATE conveyor_jobs SET {field} = ? WHERE id = ?", (value, job_id)
            )
            assert cur.rowcount == 1
    elif rig.kind == "postgres":
        with psycopg.connect(_pg_url(rig), autocommit=True) as conn:
            cast = {"metadata": "::jsonb", "error": "::jsonb", "errors": "::jsonb"}.get(field, "")
            cur = conn.execute(
                f"UPDATE {_schema(rig)}.jobs SET {field} = %s{cast} WHERE id = %s", (value, job_id)
            )
            assert cur.rowcount == 1
    else:
        client = _redis(rig)
        try:
            base = _base(rig)
            if field == "payload":
                assert client.exists(f"{base}d:{job_id}")
                client.set(f"{base}d:{job_id}", value)
            else:
                assert client.exists(f"{base}j:{job_id}")
                client.hset(f"{base}j:{job_id}", field, value)
        finally:
            client.close()


def state(rig: Rig, job_id: str) -> str | None:
    """The stored state of a job, read raw (``None`` if the job is gone)."""
    if rig.kind == "sqlite":
        with _sqlite(rig) as conn:
            row = conn.execute("SELECT state FROM conveyor_jobs WHERE id = ?", (job_id,)).fetchone()
            return None if row is None else str(row[0])
    if rig.kind == "postgres":
        with psycopg.connect(_pg_url(rig), autocommit=True) as conn:
            row = conn.execute(
                f"SELECT state FROM {_schema(rig)}.jobs WHERE id = %s", (job_id,)
            ).fetchone()
            return None if row is None else str(row[0])
    client = _redis(rig)
    try:
        raw = client.hget(f"{_base(rig)}j:{job_id}", "s")
        return None if raw is None else raw.decode()
    finally:
        client.close()


def stalls(rig: Rig, job_id: str) -> int:
    """How many times a job's lease expired, read raw."""
    if rig.kind == "sqlite":
        with _sqlite(rig) as conn:
            row = conn.execute(
                "SELECT stalls FROM conveyor_jobs WHERE id = ?", (job_id,)
            ).fetchone()
            return 0 if row is None else int(row[0])
    if rig.kind == "postgres":
        with psycopg.connect(_pg_url(rig), autocommit=True) as conn:
            row = conn.execute(
                f"SELECT stalls FROM {_schema(rig)}.jobs WHERE id = %s", (job_id,)
            ).fetchone()
            return 0 if row is None else int(row[0])
    client = _redis(rig)
    try:
        raw = client.hget(f"{_base(rig)}j:{job_id}", "st")
        return 0 if raw is None else int(raw)
    finally:
        client.close()


def error_code(rig: Rig, job_id: str) -> str | None:
    """The stored error code of a job, read raw."""
    if rig.kind == "sqlite":
        with _sqlite(rig) as conn:
            row = conn.execute(
                "SELECT error_code FROM conveyor_jobs WHERE id = ?", (job_id,)
            ).fetchone()
            return None if row is None else row[0]
    if rig.kind == "postgres":
        with psycopg.connect(_pg_url(rig), autocommit=True) as conn:
            row = conn.execute(
                f"SELECT error->>'code' FROM {_schema(rig)}.jobs WHERE id = %s", (job_id,)
            ).fetchone()
            return None if row is None else row[0]
    client = _redis(rig)
    try:
        import json

        raw = client.hget(f"{_base(rig)}j:{job_id}", "e")
        if raw is None:
            return None
        try:
            return str(json.loads(raw).get("code"))
        except (ValueError, AttributeError):
            return "<unreadable>"
    finally:
        client.close()


def delete(rig: Rig, job_id: str) -> None:
    """Remove a job outright (to un-wedge a queue after a corruption case)."""
    if rig.kind == "sqlite":
        with _sqlite(rig) as conn:
            conn.execute("DELETE FROM conveyor_jobs WHERE id = ?", (job_id,))
    elif rig.kind == "postgres":
        with psycopg.connect(_pg_url(rig), autocommit=True) as conn:
            conn.execute(f"DELETE FROM {_schema(rig)}.jobs WHERE id = %s", (job_id,))
    else:
        client = _redis(rig)
        try:
            base = _base(rig)
            client.delete(f"{base}j:{job_id}", f"{base}d:{job_id}")
            for key in client.scan_iter(match=f"{base}*".replace("{", "\\{").replace("}", "\\}")):
                kind = client.type(key)
                if kind == b"zset":
                    client.zrem(key, job_id)
                elif kind == b"set":
                    client.srem(key, job_id)
        finally:
            client.close()


def drop(rig: Rig, job_id: str, field: str) -> None:
    """Delete one stored field of a job outright (Redis: a hash field, or ``payload``, the
    payload key). SQL columns cannot be absent: this is a Redis-only corruption."""
    assert rig.kind == "redis", "only Redis stores a job in parts that can go missing"
    client = _redis(rig)
    try:
        base = _base(rig)
        if field == "payload":
            assert client.delete(f"{base}d:{job_id}") == 1
        else:
            assert client.hdel(f"{base}j:{job_id}", field) == 1
    finally:
        client.close()
