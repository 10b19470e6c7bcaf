"""The defer capability for the memory backend (the reference): see
:mod:`conveyor.backends.capabilities.defer`."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from conveyor.backends.capabilities.defer import Defers
from conveyor.domain.states import JobState

if TYPE_CHECKING:
    from conveyor.backends.memory.backend import MemoryStore
    from conveyor.domain.job import JobRecord


class MemoryDefer(Defers):
    """Mixed into :class:`~conveyor.backends.memory.backend.MemoryBackend`."""

    store: MemoryStore

    if TYPE_CHECKING:

        def _now(self, now: float | None) -> float: ...

        def _held(self, job_id: str, fence: int) -> JobRecord | None: ...

    async def defer(self, job_id: str, fence: int, delay: float, now: float | None = None) -> bool:
        t = self._now(now)
        with self.store.lock:
            job = self._held(job_id, fence)
            if job is None:
                return False
            self.store.jobs[job_id] = replace(
                job,
                state=JobState.QUEUED if delay <= 0 else JobState.SCHEDULED,
                run_at=t + max(delay, 0.0),
                attempts=max(job.attempts - 1, 0),
                lease_owner=None,
                lease_until=None,
            )
        self.store.wake()
        return True
