"""Retention by count (issue 19): keep at most N finished jobs per state.

Age limits are pruned by the backend's ``delete_jobs`` with a ``finished_before`` filter; a
count limit keeps the most recently created N jobs of the state (ids sort by creation) and
deletes the rest, page by page, through the same fenced-free terminal-state delete.
"""

from __future__ import annotations

from conveyor.backends.base import Backend
from conveyor.core.options import Retention
from conveyor.domain.job import JobFilter
from conveyor.domain.states import JobState


def count_limits(retention: Retention) -> list[tuple[JobState, int]]:
    """The states with a count limit, and the limit."""
    pairs = (
        (JobState.COMPLETED, retention.completed_max_items),
        (JobState.CANCELLED, retention.cancelled_max_items),
        (JobState.EXPIRED, retention.expired_max_items),
        (JobState.FAILED, retention.failed_max_items),
    )
    return [(state, limit) for state, limit in pairs if limit is not None]


async def prune_by_count(backend: Backend, retention: Retention, *, batch: int = 500) -> int:
    """Delete the jobs beyond each state's count limit (the oldest first); returns how many."""
    total = 0
    for state, keep in count_limits(retention):
        while True:
            beyond = await backend.list_jobs(JobFilter(states=(state,)), limit=batch, offset=keep)
            if not beyond:
                break
            ids = tuple(r.id for r in beyond)
            deleted = await backend.delete_jobs(JobFilter(states=(state,), ids=ids), limit=batch)
            total += deleted
            if deleted == 0 or len(beyond) < batch:
                break
    return total
