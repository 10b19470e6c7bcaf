"""The narrow view of the app the event bus depends on (never the whole ``Conveyor``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from conveyor.backends.base import BackendFactory
from conveyor.backends.capabilities.events import EventBusStore
from conveyor.bus.config import EventBusConfig
from conveyor.bus.event import Event, Published
from conveyor.bus.types import EventTypes
from conveyor.core.events import EventHub
from conveyor.core.options import QueueConfig
from conveyor.core.ports import AppPort
from conveyor.core.task import Task
from conveyor.domain.retry import RetryPolicy


class BusHost(AppPort, Protocol):
    """What the bus needs of an app: the store, its tasks and queues, the lifecycle hub."""

    factory: BackendFactory
    timeout: float | None
    tasks: dict[str, Task[Any, Any]]
    queues: dict[str, QueueConfig]
    events: EventHub

    def queue(
        self,
        name: str,
        *,
        concurrency: int | None = None,
        priority: int | str = 0,
        retry: RetryPolicy | int | None = None,
        dead_letter: str | None = None,
    ) -> QueueConfig:
        """Declare a queue's settings."""
        ...

    def retry_policy_for(self, task: Task[Any, Any] | None, queue: str) -> RetryPolicy:
        """The retry policy a job of ``task`` in ``queue`` runs under."""
        ...

    def declare_task(self, fn: Callable[..., Any], **options: Any) -> Task[Any, Any]:
        """Declare ``fn`` as a task with ``options`` (those of ``app.task``)."""
        ...


class BusCore(Protocol):
    """What the bus's parts (delivery, inspection, sourcing, upkeep) need of the bus."""

    host: BusHost
    types: EventTypes
    config: EventBusConfig

    async def store(self) -> EventBusStore:
        """The app's backend client for this loop, as an event-bus store."""
        ...

    async def publish_many(
        self, events: Sequence[Event[Any] | object], *, connection: Any = None
    ) -> list[Published]:
        """Publish several events in one atomic step."""
        ...
