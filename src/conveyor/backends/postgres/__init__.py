"""The PostgreSQL backend package (``postgresql://…``).

``factory`` holds the factory and its settings, ``backend`` the client, ``client`` the
connection pool and statements, ``tx`` the outbox (enqueue and complete inside a caller's
transaction), ``kv`` the key-value capability, ``listen``/``wake`` LISTEN/NOTIFY wake-ups,
``schema`` the migrations (SQL files under ``sql/``). Importing this package does not import
psycopg: the backend and the outbox functions load it when first used, so a missing extra fails
with the install hint.
"""

from __future__ import annotations

from typing import Any

from conveyor.backends.postgres.factory import PostgresFactory, require_psycopg
from conveyor.backends.postgres.settings import PostgresSettings

__all__ = [
    "PostgresBackend",
    "PostgresFactory",
    "PostgresSettings",
    "complete_on",
    "complete_on_sync",
    "enqueue_on",
    "enqueue_on_sync",
]


def __getattr__(name: str) -> Any:
    """The client class and the outbox functions, imported on first use (they need psycopg)."""
    if name in ("enqueue_on", "enqueue_on_sync", "complete_on", "complete_on_sync"):
        require_psycopg()
        from conveyor.backends.postgres import tx

        return getattr(tx, name)
    if name == "PostgresBackend":
        require_psycopg()
        from conveyor.backends.postgres.backend import PostgresBackend

        return PostgresBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
