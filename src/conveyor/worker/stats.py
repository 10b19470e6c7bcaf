"""Per-worker counters in the shape of seed 000's ``WorkerStats``, plus per-task counters."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Counter:
    processed: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    dead: int = 0
    total_duration: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        avg = self.total_duration / self.processed if self.processed else None
        return {
            "processed": self.processed,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "retried": self.retried,
            "dead": self.dead,
            "avg_duration": avg,
        }


@dataclass
class WorkerStatsCollector:
    """Counts outcomes overall, per queue and per task."""

    processed: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    dead: int = 0
    lease_lost: int = 0
    total_duration: float = 0.0
    queues: dict[str, _Counter] = field(default_factory=dict)
    tasks: dict[str, _Counter] = field(default_factory=dict)

    def record(self, task: str, queue: str, outcome: str, duration: float) -> None:
        """``outcome``: succeeded, retried (failed, will retry), requested (the handler asked
        for a retry: counted as a retry, not a failure), dead (failed for good), cancelled, or
        handed_back (not counted as processed)."""
        if outcome == "handed_back":
            return
        by_queue = self.queues.get(queue)
        if by_queue is None:
            by_queue = self.queues[queue] = _Counter()
        by_task = self.tasks.get(task)
        if by_task is None:
            by_task = self.tasks[task] = _Counter()
        counters = (self, by_queue, by_task)
        for c in counters:
            c.processed += 1
            c.total_duration += duration
            if outcome == "succeeded":
                c.succeeded += 1
            elif outcome == "requested":
                c.retried += 1
            elif outcome in ("retried", "dead"):
                c.failed += 1
                if outcome == "retried":
                    c.retried += 1
                else:
                    c.dead += 1

    def snapshot(self, active: int, started_at: float) -> dict[str, Any]:
        return {
            "processed": self.processed,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "retried": self.retried,
            "dead": self.dead,
            "lease_lost": self.lease_lost,
            "active": active,
            "avg_duration": self.total_duration / self.processed if self.processed else None,
            "uptime": time.time() - started_at,
            "queues": {name: c.to_dict() for name, c in self.queues.items()},
            "tasks": {name: c.to_dict() for name, c in self.tasks.items()},
        }
