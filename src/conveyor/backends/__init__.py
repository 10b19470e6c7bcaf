"""Storage backends, chosen by URL.

``memory://`` (in-process reference), ``sqlite:///path.db`` (the embedded default),
``postgresql://…`` (``pip install 'conveyor[postgres]'``) and ``redis://…`` / ``rediss://…``
or ``redis+cluster://…`` for a Redis Cluster (``pip install 'conveyor[redis]'``). Imports are
lazy so the core install stays light.
"""

from __future__ import annotations

from conveyor.backends.base import Backend, BackendFactory, CancelOutcome
from conveyor.errors import ConfigurationError

DEFAULT_URL = "sqlite:///conveyor.db"

__all__ = ["DEFAULT_URL", "Backend", "BackendFactory", "CancelOutcome", "factory_from_url"]


def factory_from_url(url: str, **options: object) -> BackendFactory:
    """Build the backend factory a URL names; unknown schemes get a clear error."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "memory":
        from conveyor.backends.memory import MemoryFactory

        return MemoryFactory(url)
    if scheme == "sqlite":
        from conveyor.backends.sqlite import SQLiteFactory

        return SQLiteFactory(url, **options)  # type: ignore[arg-type]
    if scheme in ("postgres", "postgresql"):
        from conveyor.backends.postgres import PostgresFactory

        return PostgresFactory(url, **options)  # type: ignore[arg-type]
    if scheme in ("redis", "rediss", "valkey", "valkeys") or scheme.endswith("+cluster"):
        from conveyor.backends.redis import RedisFactory

        return RedisFactory(url, **options)  # type: ignore[arg-type]
    raise ConfigurationError(
        f"unsupported backend URL {url!r}; use memory://, sqlite:///path/to/jobs.db, "
        "postgresql://user@host/db, redis://host:6379/0 or redis+cluster://host:7000"
    )
