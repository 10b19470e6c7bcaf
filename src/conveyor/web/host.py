"""The narrow view of the app the dashboard depends on (never :class:`conveyor.Conveyor`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from conveyor.backends.base import CancelOutcome
from conveyor.core.inspect import InspectHost

if TYPE_CHECKING:
    from conveyor.backends.base import BackendFactory
    from conveyor.core.inspect import DeadLetters, Inspector
    from conveyor.scheduler.scheduler import Schedules


class DashboardHost(InspectHost, Protocol):
    """Inspection, dead letters, cancellation and schedules of an app."""

    inspect: Inspector
    dead_letters: DeadLetters
    default_queue: str
    factory: BackendFactory

    @property
    def schedules(self) -> Schedules:
        """Runtime management of schedules."""
        ...

    async def cancel(self, job_id: str, reason: str | None = None) -> CancelOutcome:
        """Cancel a job by id."""
        ...

    async def close(self) -> None:
        """Close this loop's backend client."""
        ...


def describe_store(app: DashboardHost) -> dict[str, Any]:
    """Facts about the store (URL without secrets, kind)."""
    return app.factory.describe()
