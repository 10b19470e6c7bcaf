"""Publishing on the event bus inside the application's own transaction on a synchronous
psycopg connection: the factory's part of the event-bus capability (psycopg is imported only
when it is used, like everything the factory module reaches)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from conveyor.backends.capabilities.events import SyncEventBusTransactions
from conveyor.domain.events import NewDelivery, NewEvent, PublishResult, SubscriptionSet

if TYPE_CHECKING:
    from conveyor.backends.postgres.settings import PostgresSettings


class PostgresEventsFactory(SyncEventBusTransactions):
    """Mixed into :class:`~conveyor.backends.postgres.PostgresFactory`."""

    settings: PostgresSettings

    def bus_publish_on_sync(
        self,
        conn: Any,
        events: Sequence[NewEvent],
        deliveries: Sequence[NewDelivery],
        version: int,
        now: float | None = None,
    ) -> list[PublishResult] | None:
        from conveyor.backends.postgres.events import idle_autocommit, publish_on_sync

        schema = self.settings.schema
        if idle_autocommit(conn):
            with conn.transaction():
                return publish_on_sync(conn, schema, events, deliveries, version, now)
        return publish_on_sync(conn, schema, events, deliveries, version, now)

    def bus_subscriptions_on_sync(self, conn: Any) -> SubscriptionSet:
        from conveyor.backends.postgres.events import subscriptions_on_sync

        return subscriptions_on_sync(conn, self.settings.schema)
