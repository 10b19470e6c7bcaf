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

from conveyor.backends.base import redact_url
from conveyor.errors import BackendError, ConveyorError, SchemaVersionError, StorageUnavailableError

MIGRATE_HINT = "run `conveyor db migrate` (or pass auto_migrate=True to create it at start-up)"


def _target(url: str) -> str:
    try:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        port = parts.port or 5432
        database = (parts.path or "/").lstrip("/") or parts.username or "postgres"
        user = parts.username or "(default user)"
    except ValueError:
        return redact_url(url)
    return f"{host}:{port} database {database!r} as user {user!r}"


def describe_connect_error(exc: BaseException, url: str) -> str:
    """A one-line explanation of why connecting to ``url`` failed, with the fix."""
    text = str(exc).strip()
    low = text.lower()
    where = _target(url)
    if "password authentication failed" in low or "no password supplied" in low:
        fix = "check the user name and password in the URL"
        problem = "the password was rejected"
    elif "does not exist" in low and "database" in low:
        fix = "create it (e.g. `createdb <name>`) or fix the database name in the URL"
        problem = "the database does not exist"
    elif "role" in low and "does not exist" in low:
        fix = "create the role or fix the user name in the URL"
        problem = "the user does not exist"
    elif "pg_hba.conf" in low:
        fix = "allow this client in the server's pg_hba.conf or use another user"
        problem = "the server refused this client"
    elif "connection refused" in low or "could not connect" in low or "timeout" in low:
        fix = "check that PostgreSQL is running and the host and port in the URL are right"
        problem = "the server is not reachable"
    elif "translate host name" in low or "name or service not known" in low:
        fix = "fix the host name in the URL"
        problem = "the host name does not resolve"
    elif "permission denied" in low or isinstance(exc, pg_errors.InsufficientPrivilege):
        fix = "grant the user CREATE on the database (or USAGE on the schema), or use another user"
        problem = "permission denied"
    elif isinstance(exc, psycopg.ProgrammingError) and "invalid" in low:
        fix = "fix the URL (postgresql://user:password@host:5432/database)"
        problem = "the connection URL is invalid"
    else:
        fix = "check the URL and that the server is up"
        problem = "connection failed"
    detail = text.splitlines()[-1] if text else type(exc).__name__
    return f"cannot use PostgreSQL at {where}: {problem} ({detail}); {fix}"


def translate(exc: psycopg.Error, url: str, schema: str) -> ConveyorError:
    """The Conveyor error for a psycopg error raised while using the store."""
    if isinstance(exc, pg_errors.UndefinedTable | pg_errors.InvalidSchemaName):
        return SchemaVersionError(
            f"the Conveyor schema {schema!r} is missing in PostgreSQL at {_target(url)}; "
            + MIGRATE_HINT
        )
    if isinstance(exc, pg_errors.InsufficientPrivilege):
        return StorageUnavailableError(describe_connect_error(exc, url))
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return StorageUnavailableError(
            f"PostgreSQL at {_target(url)} is unavailable ({first}); the call was not "
            "completed; it is safe to retry once the server is back"
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
