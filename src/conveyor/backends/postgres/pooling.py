"""Running behind a transaction pooler (PgBouncer ``pool_mode = transaction``).

In transaction mode a client owns a server session only for the length of one transaction;
the next transaction may run on another session, and a session a client used is handed to
others afterwards. Conveyor keeps no session state between transactions (no ``SET``, no
temporary tables, no session advisory locks: the migration lock is transaction-scoped), with
two exceptions that this module handles:

* **Prepared statements.** psycopg prepares a statement on the session after it ran it
  ``prepare_threshold`` times; behind a pooler that does not track them (PgBouncer < 1.21, or
  ``max_prepared_statements = 0``) the next transaction may land on a session without it
  (``prepared statement "_pg3_0" does not exist``). When pooled, ``prepare_threshold`` is
  ``None`` (never prepare).
* **LISTEN.** A LISTEN registers the *session* it ran on, which the pooler hands to another
  client right after; notifications never reach the listener, and nothing reports an error.
  When pooled, LISTEN goes to ``listen_url`` (a direct or session-pooled connection) or, when
  there is none, waiters poll every ``poll_interval``.

Detection (``pooled=None``, the default) runs when a client opens: two connections open at
the same time ask for their server's backend pid. Without a pooler, and behind a
session-mode pooler, they are two sessions with two pids; behind a transaction-mode pooler
the second connection is served by the session the first one just released (PgBouncer
reuses the most recently released server connection), so both report the same pid. That
answer is certain when it says "pooled"; it can miss a pooler that hands out sessions round
robin or a busy pool (another client takes the released session first; three rounds make that
unlikely), so two later checks catch a miss: a statement failing with "prepared statement does
not exist" (or "already exists") switches the client to pooled mode, logs it and retries the
statement, which had not run; and the LISTEN connection sends itself a notification through
the pool and falls back to polling, with a warning, when it does not arrive within
``listen_probe_timeout`` (see :class:`~conveyor.backends.postgres.listen.Listener`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import psycopg

if TYPE_CHECKING:
    from conveyor.backends.postgres.settings import PostgresSettings

log = logging.getLogger("conveyor.backends.postgres")

Conn = psycopg.AsyncConnection[Any]


async def _backend_pid(conn: Conn) -> int:
    cur = await conn.execute("SELECT pg_backend_pid()", prepare=False)
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def shares_sessions(first: Conn, conninfo: str, connect_timeout: float) -> bool:
    """Whether a second connection opened next to ``first`` runs on the same server session
    (a transaction-mode pooler; see the module docstring)."""
    second = await psycopg.AsyncConnection.connect(
        conninfo,
        autocommit=True,
        prepare_threshold=None,
        connect_timeout=max(1, int(connect_timeout)),
    )
    try:
        # Another client can take the released session in between; a few rounds make a miss
        # unlikely, and a miss is caught later anyway (``PostgresClient.found_pooler``).
        for _ in range(3):
            if await _backend_pid(first) == await _backend_pid(second):
                return True
        return False
    finally:
        await second.close()


def listen_conninfo(settings: PostgresSettings, pooled: bool) -> str | None:
    """Where the LISTEN connection goes: ``listen_url``, the URL itself when nothing pools
    it, or ``None`` (poll only) when LISTEN is off or would silently not work."""
    if not settings.listen:
        return None
    if settings.listen_url:
        return settings.listen_conninfo()
    return None if pooled else settings.conninfo()


def report(settings: PostgresSettings, pooled: bool, detected: bool) -> None:
    """The start-up log line about pooling (nothing when the connection is direct)."""
    if not pooled:
        return
    how = (
        "detected: two connections were served by one server session" if detected else "pooled=True"
    )
    head = (
        f"PostgreSQL at {settings.url_target} is behind a transaction pooler ({how}): "
        "server-side prepared statements are off"
    )
    if not settings.listen:
        log.info("%s; LISTEN is off (listen=False): waiters poll every %gs", head,
                 settings.poll_interval)  # fmt: skip
    elif settings.listen_url:
        log.info("%s; LISTEN goes to %s (listen_url)", head, settings.listen_target)
    else:
        level = logging.WARNING if detected else logging.INFO
        log.log(
            level,
            "%s; LISTEN cannot work through it, so waiting workers poll every %gs instead of "
            "waking at once: pass listen_url= (a direct or session-pooled connection) for "
            "instant wake-ups, or pooled=True / listen=False to say this is intended",
            head,
            settings.poll_interval,
        )
