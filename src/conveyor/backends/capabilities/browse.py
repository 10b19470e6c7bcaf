"""The browsing capability: the reads an operator's dashboard needs, cheap at any table size.

The core protocol's ``list_jobs``/``count_jobs`` page with OFFSET and count every row; fine for
the CLI on small stores, ruinous for a dashboard refreshing over a million jobs. This capability
gives:

- :meth:`JobBrowser.browse_jobs`: keyset paging (``before``/``after`` an id, newest first, never
  an offset), each state/queue/task filter served by an index;
- :meth:`JobBrowser.count_states`: counts by queue and state, exact up to ``cap`` per pair and
  reported as ``cap`` with ``exact=False`` above it (bounded work however large the store);
- :meth:`JobBrowser.oldest_queued`: per queue, the run-at of the job waiting longest;
- :meth:`JobBrowser.job_for_key`: the job holding an idempotency key;
- stored throughput counters (:meth:`add_throughput`, :meth:`read_throughput`,
  :meth:`prune_throughput`): per-minute outcome counts that workers flush with their
  heartbeats, so "throughput over 24 h" survives restarts and pruning.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from conveyor.domain.job import JobRecord
from conveyor.domain.states import JobState

#: Throughput buckets are this many seconds wide (one minute).
BUCKET = 60.0


@dataclass(frozen=True, slots=True)
class BrowseQuery:
    """One page of jobs: filters, a keyset cursor, a size.

    ``before``: ids strictly lower (older pages); ``after``: ids strictly higher (newer pages);
    the result is always newest first. ``None`` filters match anything.
    """

    states: tuple[JobState, ...] | None = None
    queue: str | None = None
    task: str | None = None
    error_code: str | None = None
    before: str | None = None
    after: str | None = None
    limit: int = 50


@dataclass(frozen=True, slots=True)
class StateCount:
    """Jobs of one queue in one state: ``count`` is exact when ``exact``, else a lower bound."""

    queue: str
    state: JobState
    count: int
    exact: bool = True


@dataclass(frozen=True, slots=True)
class ThroughputRow:
    """Outcomes of one task on one queue during one minute (``bucket`` is its start, epoch s).

    ``outcome`` is a worker outcome: ``succeeded``, ``retried``, ``dead`` or ``cancelled``;
    ``duration`` is the summed run time of those attempts, seconds.
    """

    bucket: float
    queue: str
    task: str
    outcome: str
    count: int
    duration: float = 0.0


def bucket_of(ts: float) -> float:
    """The start of the minute ``ts`` falls in."""
    return float(int(ts // BUCKET) * int(BUCKET))


class JobBrowser(ABC):
    """Dashboard reads with bounded cost, and the stored throughput counters."""

    @abstractmethod
    async def browse_jobs(self, query: BrowseQuery) -> list[JobRecord]:
        """At most ``query.limit`` matching jobs, newest (highest id) first, from the cursor.

        With ``after`` the page is the ``limit`` jobs just above it (still returned newest
        first). Records may omit logs (``logs=()``): list pages do not show them.
        """

    @abstractmethod
    async def count_states(self, cap: int = 10_000) -> list[StateCount]:
        """Counts of every (queue, state) pair that has jobs, each exact up to ``cap``; a pair
        with more is reported as ``count=cap, exact=False``. Sorted by queue, then state."""

    @abstractmethod
    async def oldest_queued(self) -> dict[str, float]:
        """Per queue with queued jobs: the lowest run-at among them (how long the head of the
        queue has been claimable)."""

    @abstractmethod
    async def job_for_key(self, key: str) -> str | None:
        """The id of the job that holds (or last took) idempotency key ``key``, or ``None``."""

    @abstractmethod
    async def add_throughput(self, rows: Sequence[ThroughputRow]) -> None:
        """Add the rows' counts and durations to the stored ones, atomically."""

    @abstractmethod
    async def read_throughput(self, since: float) -> list[ThroughputRow]:
        """Every stored row whose bucket starts at or after ``since``, sorted by bucket, queue,
        task, outcome."""

    @abstractmethod
    async def prune_throughput(self, before: float) -> int:
        """Forget rows whose bucket starts before ``before``; how many."""
