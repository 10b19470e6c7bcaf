"""The event bus: typed events, subscriptions, an event log with delivery tracking, replay,
and event sourcing, on Conveyor's own storage and workers (``app.bus``)."""

from conveyor.bus.bus import EventBus
from conveyor.bus.config import BusQueueConfig, EventBusConfig, EventSourcingConfig
from conveyor.bus.envelope import EventDecodeError
from conveyor.bus.event import Delivery, Event, Published, StoredEvent
from conveyor.bus.inspect import EventDetails, ReplayReport
from conveyor.bus.sourcing import Aggregate, EventStore, Snapshot
from conveyor.bus.subscriptions import Subscription
from conveyor.domain.events import DeliveryState

__all__ = [
    "Aggregate",
    "BusQueueConfig",
    "Delivery",
    "DeliveryState",
    "Event",
    "EventBus",
    "EventBusConfig",
    "EventDecodeError",
    "EventDetails",
    "EventSourcingConfig",
    "EventStore",
    "Published",
    "ReplayReport",
    "Snapshot",
    "StoredEvent",
    "Subscription",
]
