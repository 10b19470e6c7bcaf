"""The store on one of Django's own databases, resolved when first used (so Django's test
runner, which renames the database, gets its test database)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from conveyor.backends import BackendFactory, factory_from_url
from conveyor.backends.base import Backend
from conveyor.backends.capabilities import SyncTransactions
from conveyor.domain.job import EnqueueResult, NewJob
from conveyor.errors import ConfigurationError


def database_url(using: str = "default") -> str:
    """Django's ``DATABASES[using]`` as a Conveyor URL (PostgreSQL or SQLite)."""
    from django.db import connections

    settings = connections[using].settings_dict
    engine = str(settings.get("ENGINE", ""))
    if engine.endswith("sqlite3"):
        name = str(settings.get("NAME") or "")
        if not name or name == ":memory:" or name.startswith("file:"):
            raise ConfigurationError(
                f"database {using!r} is an in-memory SQLite database; Conveyor's workers need "
                "a file (set DATABASES[...]['TEST']['NAME'] to a path for tests)"
            )
        return f"sqlite:///{name}"
    if "postgresql" in engine:
        user = quote(str(settings.get("USER") or ""), safe="")
        password = quote(str(settings.get("PASSWORD") or ""), safe="")
        auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
        host = str(settings.get("HOST") or "localhost")
        port = f":{settings['PORT']}" if settings.get("PORT") else ""
        return f"postgresql://{auth}{host}{port}/{quote(str(settings.get('NAME') or ''))}"
    raise ConfigurationError(
        f"database {using!r} uses {engine}; Conveyor can share PostgreSQL and SQLite databases"
    )


class DjangoDatabaseFactory(SyncTransactions, BackendFactory):
    """A :class:`BackendFactory` over ``DATABASES[using]``; ``options`` go to the backend
    (PostgreSQL: ``schema``, default ``"conveyor"``)."""

    def __init__(self, using: str = "default", **options: Any) -> None:
        self.using = using
        self.options = options
        self._current: tuple[str, BackendFactory] | None = None

    @property
    def url(self) -> str:  # type: ignore[override]
        return database_url(self.using)

    def delegate(self) -> BackendFactory:
        """The real factory for the database as Django names it now."""
        url = database_url(self.using)
        if self._current is None or self._current[0] != url:
            options = dict(self.options)
            if url.startswith("postgresql"):
                options.setdefault("schema", "conveyor")
            self._current = (url, factory_from_url(url, **options))
        return self._current[1]

    def create(self) -> Backend:
        return self.delegate().create()

    async def migrate(self) -> list[str]:
        return await self.delegate().migrate()

    async def destroy(self) -> None:
        await self.delegate().destroy()

    def describe(self) -> dict[str, Any]:
        return {**self.delegate().describe(), "django_database": self.using}

    def _sync(self) -> SyncTransactions:
        factory = self.delegate()
        assert isinstance(factory, SyncTransactions)
        return factory

    def enqueue_on_sync(
        self, conn: Any, jobs: Sequence[NewJob], now: float | None = None
    ) -> list[EnqueueResult]:
        return self._sync().enqueue_on_sync(conn, jobs, now)

    def complete_on_sync(
        self, conn: Any, job_id: str, fence: int, result: bytes | None, now: float | None = None
    ) -> bool:
        return self._sync().complete_on_sync(conn, job_id, fence, result, now)


def database_factory(using: str = "default", **options: Any) -> DjangoDatabaseFactory:
    """``Conveyor(backend_factory=database_factory("default"))``: keep the jobs in Django's
    own database."""
    return DjangoDatabaseFactory(using, **options)
