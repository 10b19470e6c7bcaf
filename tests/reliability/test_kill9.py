"""Scenario 1 (T1, T19): kill -9 one of several workers, again and again, while jobs run.

Three workers share a store; every couple of seconds the one holding the most running jobs is
SIGKILLed and a replacement started, while more jobs keep arriving. The survivors recover the
dead workers' leases and the work finishes: nothing lost, every job completed exactly once
(one stored completion, from the run holding the newest lease), and the only runs that
happened twice are those a killed worker was in the middle of.
"""

from __future__ import annotations

import random
from collections import Counter

from .conftest import MakeRig, Results, Size
from .harness import Rig, wait_until

MAINTENANCE = 5.0  # WorkerConfig.maintenance_interval: how often each worker recovers leases


def busiest(rig: Rig) -> int | None:
    """The live worker with the most started-but-unfinished runs right now."""
    open_runs: Counter[int] = Counter()
    ended = {e["x"] for e in rig.ledger.events("end")}
    for e in rig.ledger.events("start"):
        if e["x"] not in ended:
            open_runs[e["pid"]] += 1
    live = {p.pid for p in rig.procs if p.alive}
    ranked = [(n, pid) for pid, n in open_runs.items() if pid in live]
    return max(ranked)[1] if ranked else None


def workload(rng: random.Random, n: int) -> list[tuple[str, tuple[int]]]:
    return [
        ("work" if rng.random() < 0.7 else "sync_work", (rng.randint(20, 150),)) for _ in range(n)
    ]


async def test_kill_9_workers_repeatedly_under_load(
    make_rig: MakeRig, kind: str, size: Size, results: Results
) -> None:
    kills = size.pick(3, 20)
    batches = size.pick(4, 25)
    per_batch = size.pick(150, 200)
    rig = await make_rig(kind, lease=2.0, heartbeat=0.5, max_stalls=kills + 5)
    rng = random.Random(1)
    await rig.enqueue_many(workload(rng, per_batch))
    workers = [rig.start_worker(concurrency=8) for _ in range(3)]
    await rig.wait_started(*workers)

    for i in range(max(kills, batches)):
        if i < batches - 1:
            await rig.enqueue_many(workload(rng, per_batch))
        if i >= kills:
            continue
        # Let the survivors get going, then kill whoever holds the most running jobs.
        floor = rig.ledger.count("end") + 40
        await wait_until(lambda f=floor: rig.ledger.count("end") >= f, 60, message="progress")
        victim_pid = await wait_until(lambda: busiest(rig), 30, message="a busy worker")
        victim = next(p for p in rig.procs if p.pid == victim_pid)
        rig.kill(victim)
        await victim.wait_exit(10)
        replacement = rig.start_worker(concurrency=8)
        await rig.wait_started(replacement)

    drained_in = await rig.drain(timeout=size.pick(120, 900))
    codes = await rig.stop_all()
    verdict, records = await rig.verdict()
    recovery = rig.recovery(records)
    results.write(
        "kill9_repeated",
        kind,
        {
            **verdict.summary(),
            **recovery,
            "workers": 3,
            "concurrency": 8,
            "lease_s": rig.lease,
            "drain_after_last_kill_s": round(drained_in, 2),
            "elapsed_s": round(rig.elapsed(), 1),
        },
    )
    verdict.assert_clean()
    assert verdict.summary()["lost"] == 0
    assert set(verdict.duplicate_runs) <= {"killed", "killed_before_ack"}, verdict.duplicate_runs
    assert recovery["kills"] == kills and recovery["jobs_in_flight_at_kills"] > 0
    assert verdict.max_stalls_seen <= kills
    # Recovery needs the lease to run out and a survivor's maintenance tick to come round.
    assert recovery["rerun_after_kill_s"]["max"] < rig.lease + MAINTENANCE + 5, recovery
    assert set(codes.values()) == {0}, codes
    rig.logs_without_tracebacks()
