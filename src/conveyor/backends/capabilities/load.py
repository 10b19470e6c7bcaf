"""The queue-load capability: per queue, how much work is waiting and for how long.

These are the numbers an autoscaler needs (``conveyor worker --autoscale``, ``conveyor load
--json`` for KEDA or a Kubernetes HPA): jobs that could start now, jobs running, and how long
the longest-waiting of the former has waited. Latency (the age) is the better signal: a depth
of 1,000 one-millisecond jobs is no backlog, a depth of 10 one-hour jobs is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class QueueLoad:
    """One queue's load at one instant.

    ``ready``: jobs that could start now (``queued``, plus ``scheduled`` ones whose run-at has
    passed and that the next claim will promote). ``running``: jobs under a lease.
    ``oldest_age``: seconds since the longest-waiting ready job became ready (its run-at), on
    the store's clock (or the ``now`` given); ``None`` when nothing is ready.
    """

    queue: str
    ready: int = 0
    running: int = 0
    oldest_age: float | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "queue": self.queue,
            "ready": self.ready,
            "running": self.running,
            "oldest_age_seconds": self.oldest_age,
        }


class ReportsLoad(ABC):
    """Per-queue load, read in one consistent step per queue."""

    @abstractmethod
    async def queue_load(
        self, queues: Sequence[str] | None = None, now: float | None = None
    ) -> list[QueueLoad]:
        """The load of ``queues`` (in that order, duplicates dropped, idle queues as zeros),
        or of every queue that has ready or running jobs (sorted by name) when ``None``.
        ``now`` is the caller's clock (``None``: the store's)."""
