"""``postgresql://…``: the production backend for many worker hosts sharing one database.

    factory = factory_from_url("postgresql://app@db:5432/app", schema="conveyor")
    await factory.migrate()            # or `conveyor db migrate`, or auto_migrate=True

Options: ``schema`` (a PostgreSQL schema, so several apps, or tests, share one database),
``auto_migrate`` (create or upgrade the schema when a client opens), ``pool_min``/``pool_max``
(connections per client), ``listen`` (LISTEN/NOTIFY wake-ups; ``False`` polls only),
``poll_interval`` (seconds between polls while waiting), ``timeout`` (seconds to wait for a
connection), ``notify_interval`` (the least time between two notifications about one queue
from one client), ``prepare_threshold`` (psycopg's server-side prepared statements; ``None``
turns them off) and ``command_timeout`` (seconds a statement may go unanswered before its
connection is presumed dead, dropped and replaced; ``None``: wait forever).

Behind PgBouncer in transaction mode (see :mod:`conveyor.backends.postgres.pooling` and
``docs/scaling.md``): ``pooled`` (``None``, the default, detects a transaction pooler when a
client opens; ``True``/``False`` says so and skips the check; when pooled, prepared
statements are off), ``listen_url`` (a direct or session-pooled URL for the one LISTEN
connection per client; without it a pooled client polls) and ``listen_probe_timeout``
(seconds the LISTEN connection waits for its own test notification before it concludes
LISTEN does not work there and falls back to polling).

The outbox functions :func:`enqueue_on`, :func:`enqueue_on_sync` and :func:`complete_on` are
re-exported by the package (:mod:`conveyor.backends.postgres`) from its ``tx`` module. This
module imports psycopg only when used, so a missing extra fails with the install hint at
factory construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from conveyor.backends.base import BackendFactory
from conveyor.backends.capabilities.transactions import SyncTransactions
from conveyor.backends.common import redact_url
from conveyor.backends.postgres.events_factory import PostgresEventsFactory  # issue 16
from conveyor.backends.postgres.settings import PostgresSettings
from conveyor.errors import ConfigurationError, MissingDependencyError, StorageUnavailableError

if TYPE_CHECKING:
    import psycopg

    from conveyor.backends.postgres.backend import PostgresBackend
    from conveyor.domain.job import EnqueueResult, NewJob

__all__ = ["PostgresFactory", "PostgresSettings"]


def require_psycopg() -> None:
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        raise MissingDependencyError("psycopg", "postgres") from None


class PostgresFactory(PostgresEventsFactory, SyncTransactions, BackendFactory):
    """Makes :class:`~conveyor.backends.postgres.backend.PostgresBackend` clients of one schema."""

    def __init__(
        self,
        url: str,
        *,
        schema: str = "conveyor",
        auto_migrate: bool = False,
        pool_min: int = 1,
        pool_max: int = 10,
        listen: bool = True,
        poll_interval: float = 1.0,
        timeout: float = 10.0,
        notify_interval: float = 0.1,
        prepare_threshold: int | None = 5,
        command_timeout: float | None = 10.0,
        pooled: bool | None = None,
        listen_url: str | None = None,
        listen_probe_timeout: float = 5.0,
    ) -> None:
        require_psycopg()
        from conveyor.backends.postgres.statements import quote_ident

        try:
            quote_ident(schema)
        except ValueError as exc:
            raise ConfigurationError(f"invalid PostgreSQL schema name: {exc}") from None
        if pool_min < 0 or pool_max < 1 or pool_min > pool_max:
            raise ConfigurationError(
                f"pool sizes must satisfy 0 <= pool_min <= pool_max and pool_max >= 1; "
                f"got pool_min={pool_min}, pool_max={pool_max}"
            )
        if poll_interval <= 0 or timeout <= 0 or notify_interval < 0:
            raise ConfigurationError("poll_interval and timeout must be > 0")
        if command_timeout is not None and command_timeout <= 0:
            raise ConfigurationError("command_timeout must be > 0 (or None for no deadline)")
        if listen_probe_timeout <= 0:
            raise ConfigurationError("listen_probe_timeout must be > 0")
        if listen_url is not None and not listen_url.lower().startswith(
            ("postgres://", "postgresql://")
        ):
            raise ConfigurationError(
                f"listen_url must be a postgresql:// URL (a direct or session-pooled "
                f"connection for LISTEN); got {redact_url(listen_url)!r}"
            )
        self.url = url
        self.settings = PostgresSettings(
            url=url,
            schema=schema,
            auto_migrate=auto_migrate,
            pool_min=pool_min,
            pool_max=pool_max,
            listen=listen,
            poll_interval=poll_interval,
            timeout=timeout,
            notify_interval=notify_interval,
            prepare_threshold=prepare_threshold,
            command_timeout=command_timeout,
            pooled=pooled,
            listen_url=listen_url,
            listen_probe_timeout=listen_probe_timeout,
        )

    @property
    def schema(self) -> str:
        return self.settings.schema

    def create(self) -> PostgresBackend:
        from conveyor.backends.postgres.backend import PostgresBackend

        return PostgresBackend(self.settings)

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        import psycopg

        from conveyor.backends.postgres.errors import describe_connect_error

        try:
            return await psycopg.AsyncConnection.connect(
                self.settings.conninfo(),
                autocommit=True,
                prepare_threshold=None,
                connect_timeout=max(1, int(self.settings.timeout)),
            )
        except psycopg.Error as exc:
            raise StorageUnavailableError(describe_connect_error(exc, self.url)) from None

    async def migrate(self) -> list[str]:
        """Create the schema, or apply the migrations it lacks; the steps applied."""
        import psycopg

        from conveyor.backends.postgres import schema as schema_ops
        from conveyor.backends.postgres.errors import describe_connect_error, translate

        conn = await self._connect()
        try:
            return await schema_ops.migrate(conn, self.schema)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise StorageUnavailableError(
                describe_connect_error(exc, self.url)
                + f" (creating schema {self.schema!r} needs CREATE on the database)"
            ) from None
        except psycopg.Error as exc:
            raise translate(exc, self.url, self.schema) from exc
        finally:
            await conn.close()

    async def reset(self) -> list[str]:
        """Migrate, then empty every table of the schema in place (``TRUNCATE``): workers and
        producers connected meanwhile keep working on the emptied store."""
        import psycopg

        from conveyor.backends.postgres import schema as schema_ops
        from conveyor.backends.postgres.errors import translate

        applied = await self.migrate()
        conn = await self._connect()
        try:
            await schema_ops.truncate(conn, self.schema)
        except psycopg.Error as exc:
            raise translate(exc, self.url, self.schema) from exc
        finally:
            await conn.close()
        return applied

    async def destroy(self) -> None:
        """Drop the schema and every job in it (``DROP SCHEMA … CASCADE``)."""
        import psycopg

        from conveyor.backends.postgres import schema as schema_ops
        from conveyor.backends.postgres.errors import translate

        conn = await self._connect()
        try:
            await schema_ops.destroy(conn, self.schema)
        except psycopg.Error as exc:
            raise translate(exc, self.url, self.schema) from exc
        finally:
            await conn.close()

    def describe(self) -> dict[str, Any]:
        from conveyor.backends.postgres.schema import latest_version

        s = self.settings
        return {
            "url": redact_url(self.url),
            "backend": "postgresql",
            "schema": s.schema,
            "schema_version": latest_version(),
            "pool": f"{s.pool_min}..{s.pool_max}",
            "listen": s.listen,
            "listen_url": None if s.listen_url is None else redact_url(s.listen_url),
            "pooled": "detect" if s.pooled is None else s.pooled,
            "poll_interval": s.poll_interval,
        }

    def enqueue_on_sync(
        self, conn: psycopg.Connection[Any], jobs: Sequence[NewJob], now: float | None = None
    ) -> list[EnqueueResult]:
        """Enqueue inside a synchronous connection's open transaction (the outbox pattern)."""
        from conveyor.backends.postgres.tx import enqueue_on_sync

        return enqueue_on_sync(conn, jobs, now, schema=self.schema)

    def complete_on_sync(
        self,
        conn: psycopg.Connection[Any],
        job_id: str,
        fence: int,
        result: bytes | None,
        now: float | None = None,
    ) -> bool:
        """Fenced completion inside a synchronous connection's open transaction."""
        from conveyor.backends.postgres.tx import complete_on_sync

        return complete_on_sync(conn, job_id, fence, result, now, schema=self.schema)
