"""Poison messages end in the dead-letter set with stable codes, never in a hot loop.

Jobs a worker can never run are stored through the backend API directly (as a producer with
other code, a bug or a bad deploy would leave them): an undecodable payload, arguments that do
not fit the task, a task no worker knows. With a handler that always raises they must each end
``failed`` after a bounded number of runs while the worker process lives on. A handler that
takes the whole process down is recovered after each crash until the stall limit dead-letters
it as ``poison_message``.
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from conveyor.domain.states import JobState

from . import apps
from .conftest import MakeStore, Proc, wait_until, write_result

pytestmark = pytest.mark.acceptance


async def test_bad_jobs_are_dead_lettered_with_stable_codes(
    make_store: MakeStore, kind: str
) -> None:
    store = await make_store(kind, lease=2.0, heartbeat=0.5)
    corrupt = await store.insert_raw("work", b"\xff\xfe\x00 not json {", max_attempts=5)
    misfit = await store.insert_raw(
        "work", json.dumps({"a": [1, 2, 3], "k": {"x": 1}}).encode(), max_attempts=5
    )
    unknown = await store.insert_raw(
        "no.such.task", json.dumps({"a": [], "k": {}}).encode(), max_attempts=5
    )
    failing = await store.app.tasks["boom"].enqueue("always")
    expected = {
        corrupt: ("invalid_payload", 1),
        misfit: ("invalid_payload", 1),
        unknown: ("unknown_task", 1),
        failing.id: ("error", apps.BOOM_ATTEMPTS),
    }
    worker = store.start_worker(concurrency=4)

    async def all_failed() -> bool:
        records = await store.records(expected)
        return all(r.state is JobState.FAILED for r in records.values())

    await wait_until(all_failed, 30, message="every bad job to be dead-lettered")
    # More claim cycles pass (a good job goes through); the dead ones must not move.
    good = await store.app.tasks["work"].enqueue(1)
    assert await good.result(timeout=15) == 1
    assert worker.alive, worker.log()

    records = await store.records(expected)
    for job_id, (code, attempts) in expected.items():
        rec = records[job_id]
        assert rec.state is JobState.FAILED, rec
        assert rec.error is not None and rec.error.code == code, rec.error
        assert rec.attempts == attempts, rec
        assert rec.lease_owner is None and rec.stalls == 0, rec
    assert "no.such.task" in records[unknown].error.message  # type: ignore[union-attr]
    runs = store.ledger.by_job("start")
    assert corrupt not in runs and misfit not in runs  # the handler never saw them
    assert [e["attempt"] for e in runs[failing.id]] == list(range(1, apps.BOOM_ATTEMPTS + 1))
    assert records[failing.id].error.type == "RuntimeError"  # type: ignore[union-attr]
    assert [e.code for e in records[failing.id].errors] == ["error"] * apps.BOOM_ATTEMPTS

    for code in ("invalid_payload", "unknown_task", "error"):
        listed = await store.app.dead_letters.list(error_code=code)
        assert {j.id for j in listed} == {j for j, (c, _) in expected.items() if c == code}
    worker.signal(signal.SIGTERM)
    assert await worker.wait_exit(10) == 0, worker.log()


async def test_a_handler_that_kills_its_worker_becomes_poison(
    make_store: MakeStore, kind: str
) -> None:
    max_stalls = 1
    store = await make_store(kind, lease=2.0, heartbeat=0.5, max_stalls=max_stalls)
    handle = await store.app.tasks["crash"].enqueue()
    began = time.monotonic()
    crashed: list[Proc] = []
    current = store.start_worker(concurrency=2)

    async def dead_lettered() -> bool:
        nonlocal current
        if not current.alive:
            # The crash took the worker down: start the next one, as a supervisor would.
            crashed.append(current)
            assert len(crashed) <= max_stalls + 1, "the job crashed more workers than allowed"
            current = store.start_worker(concurrency=2)
        return (await store.record(handle.id)).state is JobState.FAILED

    await wait_until(dead_lettered, 60, interval=0.1, message="the crashing job to be poison")
    elapsed = time.monotonic() - began
    rec = await store.record(handle.id)
    assert rec.error is not None and rec.error.code == "poison_message", rec.error
    assert rec.stalls == max_stalls + 1, rec
    assert rec.attempts == max_stalls + 1, rec
    assert rec.lease_owner is None
    runs = store.ledger.starts(handle.id)
    assert [e["attempt"] for e in runs] == list(range(1, max_stalls + 2))
    assert [e["pid"] for e in runs] == [p.pid for p in crashed]
    assert [p.popen.returncode for p in crashed] == [1] * (max_stalls + 1)

    # The worker that dead-lettered it is healthy and no longer touches it.
    assert current.alive
    good = await store.app.tasks["work"].enqueue(1)
    assert await good.result(timeout=15) == 1
    assert len(store.ledger.starts(handle.id)) == max_stalls + 1
    current.signal(signal.SIGTERM)
    assert await current.wait_exit(10) == 0, current.log()
    write_result(
        f"poison_crash-{kind}",
        {
            "backend": kind,
            "max_stalls": max_stalls,
            "lease_s": store.lease,
            "workers_crashed": len(crashed),
            "seconds_to_dead_letter": round(elapsed, 3),
        },
    )
