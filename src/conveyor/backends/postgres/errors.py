"""Turning psycopg failures into Conveyor's errors, with messages that name the fix.

A dropped connection, a restarting server or an exhausted pool becomes
:class:`~conveyor.errors.StorageUnavailableError`; a wrong URL, password or database name, or
a missing permission, becomes one line saying what is wrong and what to do about it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import psycopg
from psycopg import errors as pg_errors

from conveyor.backends.common import redact_url
from conveyor.errors import BackendError, ConveyorError, SchemaVersionError, StorageUnavailableError

MIGRATE_HINT = "run `conveyor db migrate` (or pass auto_migrate=True to create it at start-up)"


def _parts(url: str) -> tuple[str, int, str, str] | None:
    try:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        port = parts.port or 5432
    except ValueError:
        return None
    database = (parts.path or "/").lstrip("/") or parts.username or "postgres"
    return host, port, database, parts.username or "(default user)"


def describe_target(url: str) -> str:
    parts = _parts(url)
    if parts is None:
        return redact_url(url)
    host, port, database, user = parts
    return f"{host}:{port} database {database!r} as user {user!r}"


def _detail(text: str) -> str:
    """The informative part of a libpq message, on one line."""
    for line in text.splitlines():
        if "FATAL:" in line:
            return " ".join(line.split("FATAL:", 1)[1].split())
    flat = " ".join(text.split())
    for prefix in ("connection failed: ", "connection is bad: "):
        flat = flat.removeprefix(prefix)
    return flat


def describe_connect_error(exc: BaseException, url: str) -> str:
    """A one-line explanation of why connecting to ``url`` failed, with the fix."""
    text = str(exc).strip()
    low = text.lower()
    where = describe_target(url)
    parts = _parts(url)
    database = parts[2] if parts else "<name>"
    if "password authentication failed" in low or "no password supplied" in low:
        problem, fix = "the password was rejected", "check the user name and password in the URL"
    elif "database" in low and "does not exist" in low:
        problem = "the database does not exist"
        fix = f"create it (`createdb {database}`) or fix the database name in the URL"
    elif "role" in low and "does not exist" in low:
        problem, fix = "the user does not exist", "create the role or fix the user name in the URL"
    elif "pg_hba.conf" in low:
        problem = "the server refused this client"
        fix = "allow this client in the server's pg_hba.conf or use another user"
    elif "invalid" in low and ("connection option" in low or "uri" in low or "url" in low):
        problem = "the URL is invalid"
        fix = "write it as postgresql://user:password@host:5432/database"
    elif "translate host name" in low or "resolve host" in low or "not known" in low:
        problem, fix = "the host name does not resolve", "fix the host name in the URL"
    elif "refused" in low or "could not connect" in low or "timeout" in low or "timed out" in low:
        problem = "the server is not reachable"
        fix = "check that PostgreSQL is running and the host and port in the URL are right"
    elif "permission denied" in low or isinstance(exc, pg_errors.InsufficientPrivilege):
        problem = "permission denied"
        fix = "grant the user CREATE on the database (or USAGE on the schema), or use another user"
    else:
        problem, fix = "connection failed", "check the URL and that the server is up"
    detail = _detail(text) or type(exc).__name__
    return f"cannot use PostgreSQL at {where}: {problem} ({detail}); {fix}"


def translate(exc: psycopg.Error, url: str, schema: str) -> ConveyorError:
    """The Conveyor error for a psycopg error raised while using the store."""
    if isinstance(exc, pg_errors.UndefinedTable | pg_errors.InvalidSchemaName):
        return SchemaVersionError(
            f"the Conveyor schema {schema!r} is missing at {describe_target(url)}; " + MIGRATE_HINT
        )
    if isinstance(exc, pg_errors.InsufficientPrivilege):
        return StorageUnavailableError(describe_connect_error(exc, url))
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        detail = _detail(str(exc).strip()) or type(exc).__name__
        return StorageUnavailableError(
            f"PostgreSQL at {describe_target(url)} is unavailable ({detail}); "
            "the call may not have taken effect"
        )
    return BackendError(f"PostgreSQL error: {str(exc).strip() or type(exc).__name__}")


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` means the connection or server went away (worth a retry of a read)."""
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError) and not isinstance(
        exc, pg_errors.InsufficientPrivilege
    )


@contextmanager
def translated(url: str, schema: str) -> Iterator[None]:
    """Re-raise psycopg errors as Conveyor errors (the driver's error stays as the cause)."""
    try:
        yield
    except psycopg.Error as exc:
        raise translate(exc, url, schema) from exc
