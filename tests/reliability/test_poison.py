"""Scenario 6 (T12): poison messages end in the dead-letter set, with no hot loop.

Two workers (restarted by the test whenever one dies) run a stream of good jobs mixed with
poison: a payload the decoder cannot read, arguments that do not fit the task, a task no
worker declares, a handler that always raises, and a handler that takes its whole worker
process down. Each poison job must end ``failed`` with its stable code after exactly the
configured number of runs (the raising one spaced by its backoff); the good jobs complete;
and once everything is dead-lettered the workers sit idle (CPU use near zero, the dead jobs
untouched).
"""

from __future__ import annotations

import asyncio
import itertools
import json

from conveyor.domain.ids import new_job_id
from conveyor.domain.job import NewJob

from . import apps
from .checker import Expect
from .conftest import MakeRig, Results, Size
from .harness import Rig, idle_cpu, now

MAX_STALLS = 2


async def insert_raw(rig: Rig, task: str, payload: bytes) -> str:
    """Store a job through the backend directly, bypassing the core's checks (as a producer
    with other code, a bug or a bad deploy would)."""
    job_id = new_job_id()
    backend = await rig.app.backend()
    await backend.enqueue(
        [NewJob(id=job_id, task=task, queue="default", payload=payload, max_attempts=5)]
    )
    return job_id


async def supervise(rig: Rig, stop: asyncio.Event, restarts: list[float]) -> None:
    """Keep two workers alive: a dead one is noted in the fault log and replaced."""
    while not stop.is_set():
        for proc in list(rig.procs):
            if (
                not proc.alive
                and proc.popen.returncode not in (0, None)
                and proc.pid not in {p for f in rig.faults.faults for p in f.pids}
            ):
                rig.faults.died(proc.pid, now())
                restarts.append(now())
                rig.spawn(list(proc.argv), "worker", rig.env())  # the same worker again
        try:
            await asyncio.wait_for(stop.wait(), 0.1)
        except TimeoutError:
            pass


async def test_poison_messages_are_dead_lettered_without_a_hot_loop(
    make_rig: MakeRig, kind: str, size: Size, results: Results
) -> None:
    rig = await make_rig(kind, lease=2.0, heartbeat=0.5, max_stalls=MAX_STALLS)
    invalid = Expect.of("failed", codes=["invalid_payload"])
    poison = {
        await insert_raw(rig, "work", b"\xff\xfe\x00 not json {"): invalid,
        await insert_raw(
            rig, "work", json.dumps({"a": [1, 2, 3], "k": {"x": 1}}).encode()
        ): invalid,
        await insert_raw(rig, "work", b'{"a": "not a list"}'): invalid,
        await insert_raw(rig, "no.such.task", b'{"a": [], "k": {}}'): Expect.of(
            "failed", codes=["unknown_task"]
        ),
        await rig.enqueue("boom", "always"): Expect.of("failed", codes=["error"]),
        # Alone in its queue with a worker of its own (see test_colocated_jobs_... below).
        await rig.enqueue("crash", queue="crashq"): Expect.of("failed", codes=["poison_message"]),
    }
    rig.expected.update(poison)
    good = await rig.enqueue_many([("work", (20,))] * size.pick(60, 600))
    for _ in range(2):
        rig.start_worker(concurrency=4)
    rig.start_worker("--queues", "crashq", concurrency=1)
    stop = asyncio.Event()
    restarts: list[float] = []
    keeper = asyncio.create_task(supervise(rig, stop, restarts))
    try:
        await rig.drain(timeout=90)
    finally:
        stop.set()
        await keeper
    before = {j: r for j, r in (await rig.records()).items() if j in poison}
    live = [p for p in rig.procs if p.alive]
    cpu = [await idle_cpu(p.pid, 2.0) for p in live]  # the window itself is the measurement
    after = {j: r for j, r in (await rig.records()).items() if j in poison}
    codes = await rig.stop_all()
    verdict, records = await rig.verdict()

    boom_id = next(j for j, e in poison.items() if e.codes == {"error"})
    crash_id = next(j for j, e in poison.items() if e.codes == {"poison_message"})
    boom_starts = sorted(e["t"] for e in rig.ledger.events("start") if e["job"] == boom_id)
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(boom_starts)]
    results.write(
        "poison",
        kind,
        {
            **verdict.summary(),
            "poison_jobs": sorted(
                f"{records[j].task}: {records[j].error.code if records[j].error else '?'} after "
                f"{records[j].attempts} attempt(s)"
                for j in poison
            ),
            "runs_of_raising_job": len(boom_starts),
            "gaps_between_its_runs_s": gaps,
            "runs_of_crashing_job": verdict.accounts[crash_id].executions,
            "worker_restarts": len(restarts),
            "idle_cpu_after_dead_letter": [round(c, 3) for c in cpu],
            "max_stalls": MAX_STALLS,
        },
    )
    verdict.assert_clean()
    assert all(r.state.value == "completed" for j, r in records.items() if j in good)
    assert (
        len(boom_starts) == apps.BOOM_ATTEMPTS and records[boom_id].attempts == apps.BOOM_ATTEMPTS
    )
    assert all(g >= apps.BOOM_DELAY * 0.9 for g in gaps), gaps  # backoff, not a hot loop
    # The crashing handler ran once per lease it was allowed, then was dead-lettered.
    assert verdict.accounts[crash_id].executions == MAX_STALLS + 1
    assert records[crash_id].stalls == MAX_STALLS + 1
    assert len(restarts) == MAX_STALLS + 1
    for job_id in poison:
        if poison[job_id].codes & {"invalid_payload", "unknown_task"}:
            assert records[job_id].attempts == 1 and verdict.accounts[job_id].executions == 0
    assert set(verdict.duplicate_runs) <= {"died"}, verdict.duplicate_runs
    # Idle afterwards: nothing moves, nobody spins.
    assert {j: (r.state, r.attempts, r.stalls) for j, r in before.items()} == {
        j: (r.state, r.attempts, r.stalls) for j, r in after.items()
    }
    assert max(cpu) < 0.2, cpu
    assert all(c == 0 for c in codes.values()), codes
    rig.logs_without_tracebacks("RuntimeError: always")


async def test_colocated_jobs_survive_a_job_that_kills_its_worker(make_rig: MakeRig) -> None:
    rig = await make_rig("sqlite", lease=1.0, heartbeat=0.25, max_stalls=MAX_STALLS)
    crash = await rig.enqueue("crash", expect=Expect.of("failed", codes=["poison_message"]))
    innocent = await rig.enqueue_many([("sleeper", (0.5,))] * 3)
    rig.start_worker(concurrency=4)
    stop = asyncio.Event()
    keeper = asyncio.create_task(supervise(rig, stop, []))
    try:
        await rig.drain(timeout=60)
    finally:
        stop.set()
        await keeper
    records = await rig.records()
    assert records[crash].error is not None and records[crash].error.code == "poison_message"
    assert [records[j].state.value for j in innocent] == ["completed"] * 3, [
        (records[j].state.value, records[j].stalls) for j in innocent
    ]
