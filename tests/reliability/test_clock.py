"""Scenario 7 (T15): clock skew.

How time reaches the store (read from ``src/conveyor/core/app.py`` and the backends): the core
passes ``now=app.backend_now()`` to every transition, which is ``None`` unless the app was
built with ``Conveyor(clock=...)``; ``None`` makes PostgreSQL use ``clock_timestamp()`` and
Redis ``TIME`` (SQLite and memory read the host clock). So leases are set, extended and judged
expired by the store's clock, and a worker whose wall clock is wrong cannot steal a live
lease. Two ways to skew one worker process are used here:

* ``system``: ``time.time`` itself is shifted in that process (as on a host whose clock is
  wrong; the harness's stand-in for libfaketime, which is not installed here);
* ``inject``: ``Conveyor(clock=OffsetClock(offset))`` in the worker's app. An injected clock is
  *trusted* by the store (that is how tests drive time), so a skewed injected clock does move
  leases: that case is measured and reported, not a bug.

Delays are checked as well: without an injected clock, the producer passes the delay itself
(``NewJob.delay``) and the store adds it to its own clock, so a producer whose clock is slow
does not make delayed jobs run early.

SQLite lives on one host: every process reads the same clock, so skew between them does not
arise (short of faking it per process).
"""

from __future__ import annotations

import json

import pytest

from .checker import COMPLETED
from .conftest import MakeRig, Results
from .harness import Rig, now, wait_until

SKEW = 5.0  # seconds: more than the 2 s lease
SERVER_KINDS = ("postgres", "redis")


async def _hold_and_rescue(
    rig: Rig,
    holder_skew: float,
    rescuer_skew: float,
    clock: str,
    *,
    seconds: float = 6.0,
    drain: float = 60.0,
) -> dict[str, object]:
    """Worker A (holder, clock ``holder_skew``) runs jobs longer than the lease while worker B
    (rescuer, clock ``rescuer_skew``) runs its lease recovery next to it."""
    ids = await rig.enqueue_many([("sleeper", (seconds,))] * 4)
    a = rig.start_worker(concurrency=4, skew=holder_skew or None, clock=clock)
    await wait_until(lambda: rig.ledger.count("start") == 4, 30, message="A to run all four")
    b = rig.start_worker(concurrency=4, skew=rescuer_skew or None, clock=clock)
    await rig.drain(timeout=drain)
    codes = await rig.stop_all()
    records = await rig.records()
    starts = rig.ledger.events("start")
    stolen = sorted({e["job"] for e in starts if e["pid"] == b.pid})
    return {
        "ids": ids,
        "a": a.pid,
        "b": b.pid,
        "codes": codes,
        "stolen": stolen,
        "stalls": sum(records[j].stalls for j in ids),
        "records": records,
    }


@pytest.mark.parametrize("backend", SERVER_KINDS)
async def test_a_skewed_worker_does_not_steal_live_leases(
    make_rig: MakeRig, backend: str, results: Results
) -> None:
    rig = await make_rig(backend, lease=2.0, heartbeat=0.5)
    # The holder's clock is slow and the rescuer's fast: the worst pair for client clocks.
    out = await _hold_and_rescue(rig, -SKEW, +SKEW, "system")
    verdict, _ = await rig.verdict()
    results.write(
        "clock_skew",
        backend,
        {
            **verdict.summary(),
            "holder_clock_s": -SKEW,
            "rescuer_clock_s": +SKEW,
            "lease_s": rig.lease,
            "leases_stolen": len(out["stolen"]),  # type: ignore[arg-type]
            "stalls": out["stalls"],
            "notes": [
                "skew applied by shifting time.time in each worker process (libfaketime "
                "stand-in); leases are judged by the store's clock (now=None)"
            ],
        },
    )
    verdict.assert_clean()
    assert out["stolen"] == [] and out["stalls"] == 0, out
    assert verdict.duplicated_jobs == 0
    assert set(out["codes"].values()) == {0}  # type: ignore[union-attr]


@pytest.mark.parametrize("backend", SERVER_KINDS)
async def test_an_injected_skewed_clock_is_trusted_by_the_store(
    make_rig: MakeRig, backend: str, results: Results
) -> None:
    """Documented behaviour, measured: ``Conveyor(clock=...)`` is passed to the store as
    ``now``, so a rescuer whose injected clock is fast sees live leases as expired. Fencing
    still holds: no job is completed twice, the newest lease's run wins.

    How many times a job stalls here is a matter of timing, not of the job: every lease the
    healthy holder takes (its heartbeats set ``real now + 2 s``) is expired on the rescuer's
    clock (``real now + 5 s``), so each of the rescuer's recovery passes (one per half lease)
    takes back whatever the holder holds, and the holder may win the race to claim it again.
    And a worker holds at most one suspect (the claim rule, docs/concepts.md): while the
    rescuer runs one, another suspect can only go to the holder, and bounces, one stall per
    pass, until the rescuer is free. So ``max_stalls`` is set above the passes the drain's
    deadline allows (no job can be dead-lettered by the steals), and the stalls are checked
    exactly instead: each one is a recovery the rescuer made, and every job was stolen and
    completed by the rescuer."""
    lease, drain = 2.0, 60.0
    passes = int(drain / (lease / 2)) + 2  # recovery passes the rescuer can make meanwhile
    rig = await make_rig(backend, lease=lease, heartbeat=0.5, max_stalls=passes)
    t0 = now()
    # 8 s jobs: the rescuer (a new process on a loaded machine) must make its first pass
    # before the holder's first runs could end on their own.
    out = await _hold_and_rescue(rig, 0.0, +SKEW, "inject", seconds=8.0, drain=drain)
    rig.faults.add("injected_clock", [], t0, now())  # explains the steals it causes
    verdict, records = await rig.verdict()
    stalled = rig.ledger.events("stalled")
    results.write(
        "clock_injected",
        backend,
        {
            **verdict.summary(),
            "rescuer_injected_clock_s": +SKEW,
            "leases_stolen": len(out["stolen"]),  # type: ignore[arg-type]
            "stalls": out["stalls"],
            "notes": [
                "Conveyor(clock=...) is trusted by the store (it is how tests drive time): a "
                "fast injected clock recovers live leases; use it for tests only"
            ],
        },
    )
    verdict.assert_clean()  # fencing: no double completion, no stale winner
    assert set(out["codes"].values()) == {0}  # type: ignore[union-attr]
    ids = out["ids"]
    assert isinstance(ids, list)
    # The holder's leases are always expired on the rescuer's clock: it finishes none of them.
    assert out["stolen"] == sorted(ids), out
    acked = {e["job"]: e["pid"] for e in rig.ledger.events("acked")}
    assert acked == {j: out["b"] for j in ids}, acked
    # Every stall the store counted is one recovery the rescuer made; the holder (store-clock
    # leases of the rescuer are live to it) recovered nothing.
    assert {e["pid"] for e in stalled} == {out["b"]}, stalled
    for j in ids:
        mine = [e for e in stalled if e["job"] == j]
        assert records[j].stalls == len(mine) >= 1, (j, records[j].stalls, mine)
        assert [e["stalls"] for e in mine] == list(range(1, len(mine) + 1)), mine


@pytest.mark.parametrize("backend", SERVER_KINDS)
async def test_a_delayed_job_from_a_slow_producer_does_not_run_early(
    make_rig: MakeRig, backend: str
) -> None:
    rig = await make_rig(backend, lease=2.0, heartbeat=0.5)
    worker = rig.start_worker(concurrency=2)
    await rig.wait_started(worker)
    env = rig.env(**{"REL_SKEW": str(-SKEW), "REL_CLOCK": "system"})
    t0 = now()
    done = rig.spawn(
        [*_cli_enqueue(rig), "work", "--args", "[1]", "--delay", "3s", "--json"], "cli", env
    )
    assert await done.wait_exit(30) == 0, done.log()
    text = done.log()
    job_id = json.loads(text[text.index("{") : text.rindex("}") + 1])["id"]
    rig.expect([job_id], COMPLETED)
    await wait_until(lambda: rig.ledger.jobs("start"), 30, message="the delayed job to run")
    ran_after = min(e["t"] for e in rig.ledger.events("start")) - t0
    assert ran_after >= 3.0 - 0.5, f"a 3 s delay ran after {ran_after:.2f} s"


def _cli_enqueue(rig: Rig) -> list[str]:
    import sys

    from .harness import APP_PATH

    return [sys.executable, "-m", "conveyor", "enqueue", "--app", APP_PATH]


async def test_sqlite_processes_share_one_clock(results: Results) -> None:
    results.skip(
        "clock_skew",
        "sqlite",
        "SQLite serves processes on one host, which all read the same clock: skew between "
        "its workers does not arise (faking it per process would only test the fake)",
    )
