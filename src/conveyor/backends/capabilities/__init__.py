"""Capability protocols: what a backend can do beyond the core job protocol.

:class:`~conveyor.backends.base.Backend` holds the transitions every store must implement. Each
further feature is a small protocol of its own here, implemented in each backend package and held
to the memory reference by its own contract tests (``tests/contract/capabilities/``). A backend
declares a capability by inheriting its protocol; features ask for it with :func:`require`, which
fails with a clear message on a store without it.

- :class:`KeyValueStore`: small shared state with compare-and-set (schedules); all four
  backends.
- :class:`Transactions` (client) and :class:`SyncTransactions` (factory): enqueue and fenced
  completion inside the caller's own database transaction (the outbox pattern); SQLite and
  PostgreSQL.
- :class:`PushesCancellations`: a running job is interrupted as soon as its cancellation is
  requested, not at the next heartbeat; Redis.
- :class:`EventBusStore`: the event bus's log, subscriptions and deliveries (publish = events
  plus one delivery job per matching subscription, atomically); all four backends.
  :class:`EventBusTransactions` publishes inside the caller's transaction; SQLite and PostgreSQL.
- :class:`EventStreams`: event-sourced streams with expected-version appends and snapshots;
  all four backends.
- :class:`ReportsLoad`: per-queue ready and running jobs and the oldest ready job's age (the
  autoscaling signals); all four backends.
- :class:`JobBrowser`: the dashboard's reads (keyset paging, capped counts, the oldest queued
  job) and stored per-minute throughput counters; all four backends.
- :class:`Defers`: hand a running job back for later without counting the attempt (a payload
  version newer than the worker's); all four backends.
"""

from __future__ import annotations

from typing import Any

from conveyor.backends.capabilities.browse import JobBrowser
from conveyor.backends.capabilities.cancellations import PushesCancellations
from conveyor.backends.capabilities.defer import Defers
from conveyor.backends.capabilities.events import (
    EventBusStore,
    EventBusTransactions,
    SyncEventBusTransactions,
)
from conveyor.backends.capabilities.kv import KeyValueStore
from conveyor.backends.capabilities.load import QueueLoad, ReportsLoad
from conveyor.backends.capabilities.streams import EventStreams
from conveyor.backends.capabilities.transactions import SyncTransactions, Transactions
from conveyor.errors import ConfigurationError

__all__ = [
    "Defers",
    "EventBusStore",
    "EventBusTransactions",
    "EventStreams",
    "JobBrowser",
    "KeyValueStore",
    "PushesCancellations",
    "QueueLoad",
    "ReportsLoad",
    "SyncEventBusTransactions",
    "SyncTransactions",
    "Transactions",
    "capability_names",
    "require",
    "supports",
]

#: Every capability protocol, by the name ``conveyor info`` shows.
ALL: dict[str, type[Any]] = {
    "kv": KeyValueStore,
    "transactions": Transactions,
    "pushed_cancellations": PushesCancellations,
    "events": EventBusStore,
    "events_transactions": EventBusTransactions,
    "streams": EventStreams,
    "queue_load": ReportsLoad,
    "browse": JobBrowser,
    "defer": Defers,
}


def supports(backend: object, capability: type[Any]) -> bool:
    """Whether ``backend`` implements ``capability``."""
    return isinstance(backend, capability)


def require(backend: object, capability: type[Any], feature: str) -> None:
    """Nothing if ``backend`` has ``capability``, else a :class:`ConfigurationError` naming the
    feature that needs it and the store that lacks it."""
    if isinstance(backend, capability):
        return
    raise ConfigurationError(
        f"{feature} needs a backend with the {capability.__name__} capability; "
        f"{type(backend).__name__} does not have it"
    )


def capability_names(backend: object) -> list[str]:
    """The names of the capabilities ``backend`` implements, sorted."""
    return sorted(name for name, cap in ALL.items() if isinstance(backend, cap))
