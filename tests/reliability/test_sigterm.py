"""Scenario 2 (T4): SIGTERM during load.

Three workers run a mix of short jobs and jobs longer than the grace period (async sleepers,
cooperative thread jobs, and thread jobs that ignore cancellation). The busiest worker is
stopped with SIGTERM, then another with SIGTERM twice (whose grace would have been 30 s).
Each exits within its grace; what it was still running goes back to the queue at once, with
the attempt not counted, and is picked up by the others long before the 20 s lease could have
expired. Nothing is lost, nothing recovered through a lease, no job completed twice.
"""

from __future__ import annotations

import random
import statistics

from .conftest import MakeRig, Results, Size
from .harness import Rig, wait_until
from .test_kill9 import busiest

LEASE = 20.0
GRACE = 1.0
LONG_TASKS = ("sleeper", "sync_work", "stubborn")


def long_runs(rig: Rig, pid: int) -> int:
    """Runs of jobs longer than the grace period that ``pid`` is in the middle of."""
    ended = {e["x"] for e in rig.ledger.events("end")}
    return sum(
        1
        for e in rig.ledger.events("start")
        if e["pid"] == pid and e["x"] not in ended and e.get("task") in LONG_TASKS
    )


async def test_sigterm_under_load_hands_running_jobs_back_at_once(
    make_rig: MakeRig, kind: str, size: Size, results: Results
) -> None:
    rig = await make_rig(kind, lease=LEASE, heartbeat=1.0, max_stalls=3)
    rng = random.Random(2)
    rounds = size.pick(2, 6)
    calls: list[tuple[str, tuple[float | int]]] = []
    for _ in range(rounds):
        calls += [("work", (rng.randint(20, 100),)) for _ in range(size.pick(150, 600))]
        calls += [("sleeper", (4.0,)) for _ in range(6)]
        calls += [("sync_work", (3000,)) for _ in range(3)]
        calls += [("stubborn", (3.0,)) for _ in range(2)]
    rng.shuffle(calls)
    await rig.enqueue_many(calls)
    workers = [rig.start_worker(concurrency=6, grace=GRACE) for _ in range(2)]
    workers.append(rig.start_worker(concurrency=6, grace=30.0))  # stopped with two signals
    await rig.wait_started(*workers)

    exits: list[dict[str, float | int | bool]] = []
    for i in range(rounds):
        floor = rig.ledger.count("end") + 30
        await wait_until(lambda f=floor: rig.ledger.count("end") >= f, 60, message="progress")
        twice = i == 0
        if twice:
            # The worker with 30 s of grace, while it runs a job longer than the others' grace.
            victim = workers[2]
            await wait_until(
                lambda p=victim.pid: long_runs(rig, p), 60, message="a long job on the 30 s worker"
            )
        else:
            pid = await wait_until(lambda: busiest(rig), 30, message="a busy worker")
            victim = next(p for p in rig.procs if p.pid == pid)
        code, took = await rig.sigterm(victim, twice=twice)
        exits.append({"pid": victim.pid, "code": code, "seconds": round(took, 3), "twice": twice})
        replacement = rig.start_worker(concurrency=6, grace=GRACE)
        await rig.wait_started(replacement)

    await rig.drain(timeout=size.pick(120, 600))
    final = await rig.stop_all()
    verdict, _ = await rig.verdict()

    # Hand-backs: each interrupted run's job ran again at the same attempt, soon, elsewhere.
    events = rig.ledger.events()
    starts = [e for e in events if e["ev"] == "start"]
    back = [e for e in events if e["ev"] == "handed_back"]  # the worker's own account
    pickup: list[float] = []
    problems: list[str] = []
    for end in back:
        later = [s for s in starts if s["job"] == end["job"] and s["t"] > end["t"] - 1e-3]
        if not later:
            problems.append(f"{end['job']}: handed back, never ran again")
            continue
        nxt = min(later, key=lambda s: s["t"])
        pickup.append(nxt["t"] - end["t"])
        if nxt["attempt"] != end["attempt"]:
            problems.append(
                f"{end['job']}: re-run as attempt {nxt['attempt']}, was {end['attempt']}"
            )
    # Thread handlers that ignore cancellation: their job is handed back while the thread
    # still runs; the thread dies with the exiting process. How long did both run at once?
    ends = {e["x"] for e in events if e["ev"] == "end"}
    exit_at = {f.pids[0]: f.t0 for f in rig.faults.faults if f.kind == "exited"}
    zombie_overlap: list[float] = []
    for s in starts:
        if s["x"] in ends or s["pid"] not in exit_at:
            continue
        rerun = [r["t"] for r in starts if r["job"] == s["job"] and r["t"] > s["t"]]
        if rerun:
            zombie_overlap.append(max(0.0, exit_at[s["pid"]] - min(rerun)))
    results.write(
        "sigterm_load",
        kind,
        {
            **verdict.summary(),
            "lease_s": LEASE,
            "grace_s": GRACE,
            "sigterms": exits,
            "exit_after_sigterm_max_s": max(float(e["seconds"]) for e in exits),
            "handed_back_runs": len(back),
            "pickup_after_handback_s": {
                "median": round(statistics.median(pickup), 3),
                "max": round(max(pickup), 3),
            }
            if pickup
            else None,
            "uninterruptible_thread_overlap_s": round(max(zombie_overlap), 3)
            if zombie_overlap
            else 0.0,
        },
    )
    verdict.assert_clean()
    assert not problems, problems
    assert back, "no job was handed back: the scenario did not bite"
    cut_short = [e for e in events if e["ev"] == "end" and e.get("reason") == "shutdown"]
    assert {e["job"] for e in cut_short} <= {e["job"] for e in back}, "interrupted, not handed back"
    assert verdict.max_stalls_seen == 0, "a job waited for its lease instead of a hand-back"
    assert set(verdict.duplicate_runs) <= {"handed_back", "shutdown"}, verdict.duplicate_runs
    for e in exits:
        assert e["code"] == 0, exits
        assert float(e["seconds"]) < GRACE + 5, exits  # the double signal skipped 30 s of grace
    assert max(pickup) < LEASE / 2, pickup
    assert set(final.values()) <= {0}, final
    rig.logs_without_tracebacks()
