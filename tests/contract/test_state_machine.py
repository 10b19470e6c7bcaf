"""The differential check: each real backend against the memory reference (see
:mod:`._machine`), and proof that the machine fails on subtly wrong backends."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from conveyor.backends import Backend, BackendFactory, CancelOutcome
from conveyor.backends.memory import MemoryBackend, MemoryFactory
from conveyor.domain.states import JobState

from ._machine import SETTINGS, BackendAgreement
from ._support import REAL_KINDS, require_kind


@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", REAL_KINDS, ids=list(REAL_KINDS))
def test_backend_agrees_with_memory(kind: str) -> None:
    require_kind(kind)
    machine = type(f"{kind.title()}AgreesWithMemory", (BackendAgreement,), {"kind": kind})
    run_state_machine_as_test(machine, settings=SETTINGS)


# -- the harness itself can fail -------------------------------------------------------------


class _ReleaseCountsTheAttempt(MemoryBackend):
    async def release(self, job_id: str, fence: int, now: float | None = None) -> bool:
        with self.store.lock:
            job = self.store.jobs.get(job_id)
            if job is None or job.state is not JobState.RUNNING or job.fence != fence:
                return False
            self.store.jobs[job_id] = replace(
                job, state=JobState.QUEUED, lease_owner=None, lease_until=None
            )
        return True


class _CompleteIgnoresTheFence(MemoryBackend):
    async def complete(
        self, job_id: str, fence: int, result: bytes | None, now: float | None = None
    ) -> bool:
        job = self.store.jobs.get(job_id)
        if job is None or job.state is not JobState.RUNNING:
            return False
        return await super().complete(job_id, job.fence, result, now)


class _RecoveryForgetsCancellation(MemoryBackend):
    async def cancel(
        self, job_id: str, reason: str | None = None, now: float | None = None
    ) -> CancelOutcome:
        job = self.store.jobs.get(job_id)
        if job is not None and job.state is JobState.RUNNING:
            return CancelOutcome.REQUESTED
        return await super().cancel(job_id, reason, now)


class _RepeatedCompletionSaysLeaseLost(MemoryBackend):
    async def complete(
        self, job_id: str, fence: int, result: bytes | None, now: float | None = None
    ) -> bool:
        job = self.store.jobs.get(job_id)
        if job is None or job.state is not JobState.RUNNING:
            return False
        return await super().complete(job_id, fence, result, now)


class _RetryIgnoresKeyHolders(MemoryBackend):
    def _key_holder(self, key: str, other_than: str) -> str | None:
        return None


MUTANTS: dict[str, type[MemoryBackend]] = {
    "repeated-complete-lease-lost": _RepeatedCompletionSaysLeaseLost,
    "retry-ignores-key-holders": _RetryIgnoresKeyHolders,
    "release-counts-attempt": _ReleaseCountsTheAttempt,
    "complete-ignores-fence": _CompleteIgnoresTheFence,
    "cancel-request-lost": _RecoveryForgetsCancellation,
}


@pytest.mark.parametrize("mutant", list(MUTANTS.values()), ids=list(MUTANTS))
def test_the_state_machine_catches_a_divergent_backend(mutant: type[MemoryBackend]) -> None:
    """Run the machine with a subtly wrong memory backend as the "real" one: it must fail."""

    class Mutant(BackendAgreement):
        kind = "memory"

        def create_real(self, factory: BackendFactory) -> Backend:
            assert isinstance(factory, MemoryFactory)
            return mutant(factory.store)

    # Random, not derandomized: one fixed sequence can miss a mutant by bad luck, while each
    # of these is usually found within a few dozen random examples (the run stops at the
    # first). The budget is generous because every rule the machine gains makes a given
    # mutant's scenario rarer: 500 examples missed one mutant in about 1 run of 20.
    quick = settings(
        SETTINGS, max_examples=3000, database=None, print_blob=False, phases=[Phase.generate]
    )
    with pytest.raises(AssertionError):
        run_state_machine_as_test(Mutant, settings=quick)
