"""The event-sourcing capability: streams of events per aggregate (``account-42``), appended
with an expected version (optimistic concurrency: two writers that loaded the same version
cannot both append), read from a version, and snapshots that cache a stream's folded state.

Snapshots are a cache: loading an aggregate is the latest snapshot plus the events after it,
and the events a snapshot covers may be pruned by retention; events newer than the latest
snapshot never are.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from conveyor.domain.events import AppendResult, NewStreamEvent, SnapshotRecord, StreamRecord


class EventStreams(ABC):
    """Implemented by backend clients that store event-sourced streams (all four)."""

    @abstractmethod
    async def stream_append(
        self,
        stream: str,
        events: Sequence[NewStreamEvent],
        expected_version: int | None,
        now: float | None = None,
    ) -> AppendResult:
        """Append ``events`` (versions current+1, current+2, ...) if the stream is at
        ``expected_version`` (0: new; ``None``: any), atomically. An append whose first event
        id is stored already answers as it did (idempotent retries)."""

    @abstractmethod
    async def stream_read(
        self, stream: str, after_version: int = 0, limit: int = 1000
    ) -> list[StreamRecord]:
        """The stream's events after ``after_version``, in order (pruned ones are gone)."""

    @abstractmethod
    async def stream_version(self, stream: str) -> int:
        """The stream's version (0 when it has no events)."""

    @abstractmethod
    async def snapshot_save(
        self,
        stream: str,
        version: int,
        state: bytes,
        schema_version: int = 1,
        now: float | None = None,
    ) -> None:
        """Store a snapshot of the stream as of ``version`` (replacing one of that version)."""

    @abstractmethod
    async def snapshot_load(self, stream: str) -> SnapshotRecord | None:
        """The snapshot with the highest version, or ``None``."""

    @abstractmethod
    async def stream_prune(self, before: float, limit: int = 1000) -> int:
        """Delete events recorded before ``before`` that the latest snapshot of their stream
        covers, and snapshots older than the latest; returns how many events were deleted."""
