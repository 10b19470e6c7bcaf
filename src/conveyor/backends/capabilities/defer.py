"""The defer capability: hand a running job back for later without counting the attempt.

A worker that claimed a job it cannot run yet (its payload was written by a newer version of
the task, during a rolling deploy) gives it back this way: the job waits ``scheduled`` for
``delay`` seconds, so neither this worker nor its peers of the same version claim it again in
a hot loop, while a newer worker takes it when it comes due.
"""

from __future__ import annotations

from abc import ABC, abstractmethod


class Defers(ABC):
    """``running -> scheduled`` at ``now + delay``, fenced, the attempt not counted."""

    @abstractmethod
    async def defer(self, job_id: str, fence: int, delay: float, now: float | None = None) -> bool:
        """Hand the job back: ``scheduled`` with ``run_at = now + delay`` (``queued`` when
        ``delay <= 0``), lease cleared, ``attempts - 1``, error history, stalls and fence
        unchanged. ``False`` (and nothing changed) if the lease is not held."""
