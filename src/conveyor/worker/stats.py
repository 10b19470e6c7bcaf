"""Per-worker counters in the shape of seed 000's ``WorkerStats``, plus per-task counters."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from conveyor.backends.capabilities.browse import JobBrowser, ThroughputRow, bucket_of

#: Stored throughput rows are kept this long (the dashboard shows the last 24 hours).
THROUGHPUT_RETENTION = 48 * 3600.0
#: Called with (task, queue, outcome, duration) for every recorded outcome (metrics).
Observer = Callable[[str, str, str, float], None]

log = logging.getLogger("conveyor.worker")


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
    # Outcomes not yet flushed to the store's throughput counters: (bucket, queue, task,
    # outcome) -> [count, summed duration]. See :func:`flush_throughput`.
    pending: dict[tuple[float, str, str, str], list[float]] = field(default_factory=dict)
    observers: list[Observer] = field(default_factory=list)
    last_prune: float = 0.0

    def record(self, task: str, queue: str, outcome: str, duration: float) -> None:
        """``outcome``: succeeded, retried (failed, will retry), dead (failed for good),
        cancelled, or handed_back (not counted as processed)."""
        for observer in self.observers:
            observer(task, queue, outcome, duration)
        if outcome == "handed_back":
            return
        slot = self.pending.get(key := (bucket_of(time.time()), queue, task, outcome))
        if slot is None:
            self.pending[key] = [1, duration]
        else:
            slot[0] += 1
            slot[1] += duration
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


async def flush_throughput(backend: object, stats: WorkerStatsCollector) -> None:
    """Add the outcomes recorded since the last flush to the store's per-minute throughput
    counters (called with each heartbeat); on failure they are kept for the next flush. Rows
    older than :data:`THROUGHPUT_RETENTION` are pruned about once an hour."""
    if not isinstance(backend, JobBrowser) or not stats.pending:
        return
    pending, stats.pending = stats.pending, {}
    rows = [ThroughputRow(b, q, t, o, int(n), d) for (b, q, t, o), (n, d) in pending.items()]
    try:
        await backend.add_throughput(rows)
        now = time.time()
        if now - stats.last_prune > 3600:
            stats.last_prune = now
            await backend.prune_throughput(now - THROUGHPUT_RETENTION)
    except Exception as exc:  # noqa: BLE001 - counters wait for the next beat
        log.debug("throughput flush failed: %s", exc)
        for key, (n, d) in pending.items():
            slot = stats.pending.setdefault(key, [0, 0.0])
            slot[0] += n
            slot[1] += d
