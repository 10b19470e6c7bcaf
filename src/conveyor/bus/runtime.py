"""The bus's upkeep inside a worker: store the subscriptions declared in this process, then
every ``settle_interval`` repair ordered chains whose first delivery ended without being
recorded, and prune the log (and settled streams) by their retention."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Protocol

from conveyor.bus.config import EventBusConfig


class _Streams(Protocol):
    async def prune(self) -> int: ...


class Upkept(Protocol):
    """What the upkeep needs of the bus."""

    config: EventBusConfig

    @property
    def streams(self) -> _Streams: ...

    async def sync(self) -> Any: ...

    async def settle(self) -> int: ...

    async def prune(self, older_than: float | None = None) -> int: ...


log = logging.getLogger("conveyor.bus")

#: Seconds between retention passes.
PRUNE_EVERY = 60.0


async def run(bus: Upkept, stop: asyncio.Event) -> None:
    """Until ``stop`` is set."""
    while not stop.is_set():
        try:
            await bus.sync()
            break
        except Exception as exc:  # noqa: BLE001 - the store may be down; try again
            log.warning("could not store the bus subscriptions: %s", exc)
        await _wait(stop, bus.config.settle_interval)
    last_prune = 0.0
    while not stop.is_set():
        try:
            marked = await bus.settle()
            if marked:
                log.info("bus: %d delivery(ies) of ordered chains ended unrecorded", marked)
            if time.monotonic() - last_prune >= PRUNE_EVERY:
                last_prune = time.monotonic()
                await bus.prune()
                await bus.streams.prune()
        except Exception as exc:  # noqa: BLE001 - upkeep is retried on the next pass
            log.warning("bus upkeep failed: %s", exc)
        await _wait(stop, bus.config.settle_interval)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
