"""Hostile input: corrupt stored records (what a worker reads back from storage).

One worker runs while, case after case, a waiting job has one stored field overwritten
directly in the store (a SQLite or PostgreSQL column, a Redis hash field or payload string)
with garbage or a value of the wrong shape; a healthy job waits next to it. What must hold,
for every case: the worker process survives; the healthy job completes; the corrupt job ends
in a terminal state (the dead-letter set, or completed when the field does not matter to
running it) instead of wedging the queue. Cases known to break are listed with the bug, checked
to still break (so a fix is noticed), and reported as an expected failure.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from . import rawstore
from .conftest import MakeRig, Results
from .harness import Rig

GARBAGE = b"\xff\xfe\x00{not json"
TERMINAL = {"completed", "failed", "cancelled", "expired"}
CASE_DEADLINE = 6.0

CASES: dict[str, list[tuple[str, Any]]] = {
    "sqlite": [
        ("payload", GARBAGE),
        ("payload", b'{"a": "not a list", "k": []}'),
        ("metadata", "{not json"),
        ("metadata", "[1, 2]"),
        ("metadata", "null"),
        ("error", "{bad"),
        ("errors", "garbage\n"),
        ("logs", "garbage\n"),
        ("parents", "nope"),
        ("attempts", "abc"),
        ("priority", "high"),
        ("fence", "x"),
        ("timeout", "soon"),
        ("timeout", -1.0),
        ("payload_version", "v2"),
    ],
    "postgres": [
        ("payload", GARBAGE),
        ("payload", b'{"a": "not a list", "k": []}'),
        ("metadata", "[1, 2]"),
        ("metadata", "null"),
        ("metadata", '"text"'),
        ("error", '"text"'),
        ("errors", '{"not": "a list"}'),
        ("timeout", float("nan")),
        # An integer column: a version below every task's oldest supported one. (A version
        # above the worker's is no corruption but a job from a newer producer: it waits for a
        # newer worker, see tests/unit/test_versioning.py.)
        ("payload_version", -5),
    ],
    "redis": [
        ("payload", GARBAGE),
        ("payload", b'{"a": "not a list", "k": []}'),
        ("md", "{not json"),
        ("md", "[1, 2]"),
        ("e", "{bad"),
        ("E", "bad"),
        ("L", "bad"),
        ("a", "abc"),
        ("ma", "many"),
        ("f", "x"),
        ("p", "high"),
        ("to", "soon"),
        ("pv", "v2"),
        ("t", b"\xff\xfe"),
    ],
}

#: Why known cases break (see KNOWN_BAD): a short name → the bug, its file and a fix.
REASONS: dict[str, str] = {}
#: (backend, field, repr(value)) → key into REASONS, for cases that break today.
KNOWN_BAD: dict[tuple[str, str, str], str] = {}


def _key(kind: str, field: str, value: Any) -> tuple[str, str, str]:
    return (kind, field, repr(value))


async def _wait_terminal(rig: Rig, ids: list[str], timeout: float) -> dict[str, str | None]:
    deadline = time.monotonic() + timeout
    while True:
        states = {j: await asyncio.to_thread(rawstore.state, rig, j) for j in ids}
        if all(s in TERMINAL for s in states.values()) or time.monotonic() > deadline:
            return states
        await asyncio.sleep(0.1)  # a poll interval; the deadline bounds the wait


async def test_corrupt_stored_records(make_rig: MakeRig, kind: str, results: Results) -> None:
    # max_stalls=0: a job whose lease runs out once is dead-lettered, which is enough to show
    # a batch lost with a corrupt record (and keeps each case short).
    # A short heartbeat: a worker that has not heartbeaten for half a lease stops claiming, and
    # on a loaded machine a 0.5 s beat can come that close.
    rig = await make_rig(kind, lease=2.0, heartbeat=0.25, max_stalls=0)
    worker = rig.start_worker(concurrency=4)
    await rig.wait_started(worker)
    outcomes: list[dict[str, Any]] = []
    for field, value in CASES[kind]:
        log_before = worker.log().count("claim failed")
        # One corrupt job and three healthy ones, due at the same instant: one claim takes
        # all four (the worker has four free slots).
        due = datetime.now(UTC) + timedelta(seconds=1)
        work = rig.app.tasks["work"].options(run_at=due)
        bad = (await work.enqueue(5)).id
        good = [(await work.enqueue(5)).id for _ in range(3)]
        await asyncio.to_thread(rawstore.corrupt, rig, bad, field, value)
        states = await _wait_terminal(rig, [bad, *good], CASE_DEADLINE)
        wedged = states[bad] not in TERMINAL
        if os.environ.get("REL_DEBUG") and "scheduled" in states.values():
            print(f"=== case {field}={value!r}: {states}\n{await rig.dump(worker)}")
        if wedged:  # clear the way for the next case
            await asyncio.to_thread(rawstore.delete, rig, bad)
            states.update(await _wait_terminal(rig, good, CASE_DEADLINE))
        healthy = [states[g] for g in good]
        healthy_stalls = sum([await asyncio.to_thread(rawstore.stalls, rig, g) for g in good])
        outcome = {
            "key": _key(kind, field, value),
            "case": f"{field}={value!r:.40}",
            "corrupt_job": states[bad] if not wedged else f"stuck {states[bad]}",
            "code": None if wedged else await asyncio.to_thread(rawstore.error_code, rig, bad),
            "healthy_jobs": sorted(set(healthy)),
            "healthy_stalls": healthy_stalls,
            "claim_errors": worker.log().count("claim failed") - log_before,
            "worker_alive": worker.alive,
        }
        outcome["ok"] = (
            worker.alive and set(healthy) == {"completed"} and healthy_stalls == 0 and not wedged
        )
        outcomes.append(outcome)
        if not worker.alive:
            break
    broken = [o for o in outcomes if not o["ok"]]
    results.write(
        "corrupt_records",
        kind,
        {
            "cases": len(outcomes),
            "handled": len(outcomes) - len(broken),
            "broken": [
                f"{o['case']}: corrupt job {o['corrupt_job']}/{o['code']}, healthy jobs "
                f"{'/'.join(o['healthy_jobs'])} with {o['healthy_stalls']} stalls, "
                f"{o['claim_errors']} claim errors" + ("" if o["worker_alive"] else ", WORKER DIED")
                for o in broken
            ],
            "handled_cases": [
                f"{o['case']} -> {o['corrupt_job']}/{o['code']}" for o in outcomes if o["ok"]
            ],
        },
    )
    assert worker.alive, worker.log()[-3000:]
    unexpected = [o for o in broken if o["key"] not in KNOWN_BAD]
    assert not unexpected, unexpected
    fixed = [k for k in KNOWN_BAD if k[0] == kind and k not in {o["key"] for o in broken}]
    assert not fixed, f"fixed? remove from KNOWN_BAD: {fixed}"
    if broken:  # every one of them a known bug, still there: an expected failure
        pytest.xfail(" | ".join(sorted({REASONS[KNOWN_BAD[o["key"]]] for o in broken})))
