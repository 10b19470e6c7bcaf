"""The options of one PostgreSQL factory, shared by every client it creates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class PostgresSettings:
    """The options of one :class:`PostgresFactory`, shared by every client it creates.

    ``pooled`` says whether a transaction-mode pooler (PgBouncer ``pool_mode = transaction``)
    stands between the clients and the server: ``None`` detects it when a client opens (see
    :mod:`conveyor.backends.postgres.pooling`). When pooled, server-side prepared statements
    are off and LISTEN goes to ``listen_url`` (or is replaced by polling when there is none).
    """

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
    pooled: bool | None = None
    listen_url: str | None = None
    listen_probe_timeout: float = 5.0

    @property
    def url_target(self) -> str:
        """Host, port, database and user of the URL, for messages (never the password)."""
        from conveyor.backends.postgres.errors import describe_target

        return describe_target(self.url)

    @property
    def listen_target(self) -> str:
        """Host, port, database and user the LISTEN connection goes to (for messages)."""
        from conveyor.backends.postgres.errors import describe_target

        return describe_target(self.listen_url or self.url)

    def listen_conninfo(self) -> str:
        """The connection string of the LISTEN connection: ``listen_url`` when given (a
        direct or session-pooled connection next to a transaction pooler), else the URL."""
        return self.conninfo(self.listen_url)

    def conninfo(self, url: str | None = None) -> str:
        """The libpq connection string: the URL plus defaults it does not set itself, an
        ``application_name`` naming the schema (so operators can tell Conveyor's sessions
        apart) and TCP keepalives that notice a silently dead server or network within about
        half a minute (the operating system's default is two hours), which matters most for
        the idle LISTEN connection."""
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        url = url or self.url
        given = conninfo_to_dict(url)
        defaults: dict[str, Any] = {
            "application_name": f"conveyor:{self.schema}"[:63],
            "keepalives": 1,
            "keepalives_idle": 15,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        }
        extra = {k: v for k, v in defaults.items() if k not in given}
        return make_conninfo(url, **extra) if extra else url
