"""The options of one PostgreSQL factory, shared by every client it creates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class PostgresSettings:
    """The options of one :class:`PostgresFactory`, shared by every client it creates."""

    url: str
    schema: str = "conveyor"
    auto_migrate: bool = False
    pool_min: int = 1
    pool_max: int = 10
    listen: bool = True
    poll_interval: float = 1.0
    timeout: float = 10.0
    notify_interval: float = 0.1
    prepare_threshold: int | None = 5
    command_timeout: float | None = 10.0

    @property
    def url_target(self) -> str:
        """Host, port, database and user of the URL, for messages (never the password)."""
        from conveyor.backends.postgres.errors import describe_target

        return describe_target(self.url)

    def conninfo(self) -> str:
        """The libpq connection string: the URL plus defaults it does not set itself, an
        ``application_name`` naming the schema (so operators can tell Conveyor's sessions
        apart) and TCP keepalives that notice a silently dead server or network within about
        half a minute (the operating system's default is two hours), which matters most for
        the idle LISTEN connection."""
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        given = conninfo_to_dict(self.url)
        defaults: dict[str, Any] = {
            "application_name": f"conveyor:{self.schema}"[:63],
            "keepalives": 1,
            "keepalives_idle": 15,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        }
        extra = {k: v for k, v in defaults.items() if k not in given}
        return make_conninfo(self.url, **extra) if extra else self.url
