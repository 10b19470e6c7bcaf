"""What the worker's parts share: a held job (:class:`ActiveJob`) and the narrow view of the
worker that the job runner and the cancellation listener depend on (:class:`WorkerPort`), so
they never import :class:`~conveyor.worker.worker.Worker` itself."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from conveyor.domain.job import ClaimedJob

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.backends.base import Backend
    from conveyor.worker.stats import WorkerStatsCollector


@dataclass(eq=False)
class ActiveJob:
    """A job this worker holds."""

    job: ClaimedJob
    started: float
    task: asyncio.Task[None] | None = None
    stop_reason: str | None = None  # "cancel" | "timeout" | "shutdown" | "lease_lost"
    cancel_reason: str | None = None
    # Set once the handler is done and its outcome is about to be written: from then on a
    # heartbeat's "not held" may be that write landing first, not a lost lease.
    finishing: bool = False
    ctx: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


class WorkerSettings(Protocol):
    """The worker settings its parts read."""

    @property
    def concurrency(self) -> int: ...

    @property
    def process_pool_size(self) -> int | None: ...

    @property
    def max_jobs_per_child(self) -> int | None: ...

    @property
    def max_memory_per_child(self) -> int | None: ...


class WorkerPort(Protocol):
    """The parts of a worker its runner and cancellation listener use."""

    app: Conveyor
    id: str
    active: dict[str, ActiveJob]
    stats: WorkerStatsCollector
    zombie_threads: int

    @property
    def config(self) -> WorkerSettings: ...

    @property
    def backend(self) -> Backend: ...

    @property
    def stopping(self) -> bool: ...

    def slot_freed(self) -> None:
        """Wake the claim loop: a slot is free."""
        ...

    def fused_claim(self) -> dict[str, Any] | None:
        """Arguments for claiming in the call that completes the one running job, or None."""
        ...

    async def adopt(self, finishing: ActiveJob, jobs: list[ClaimedJob], took: float) -> None:
        """Start jobs a fused completion claimed."""
        ...
