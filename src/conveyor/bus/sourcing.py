"""Event sourcing (placeholder; filled in by the streams capability)."""

from __future__ import annotations

from conveyor.bus.config import EventSourcingConfig
from conveyor.bus.ports import BusCore


class EventStore:
    """Event-sourced streams of one bus (``app.bus.streams``)."""

    def __init__(self, bus: BusCore) -> None:
        self.bus = bus
        self.config = EventSourcingConfig()

    def configure(self, config: EventSourcingConfig) -> None:
        self.config = config

    async def prune(self) -> int:
        return 0
