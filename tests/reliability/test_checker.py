"""The checker catches what it is meant to catch: synthetic ledgers with a lost job, a double
completion, an overlap on healthy workers, a stale winner, an unexplained duplicate, and the
same histories with the fault that explains them."""

from __future__ import annotations

import json
from typing import Any

from conveyor.domain.job import ErrorInfo, JobRecord
from conveyor.domain.states import JobState

from .checker import COMPLETED, Expect, FaultLog, check, recovery_times

T = 1_000.0


def rec(
    job: str,
    state: str = "completed",
    *,
    x: str | None = "a",
    fence: int = 1,
    attempts: int = 1,
    finished: float = T + 10,
    code: str | None = None,
) -> JobRecord:
    return JobRecord(
        id=job,
        task="work",
        queue="default",
        state=JobState(state),
        payload=b"{}",
        priority=0,
        run_at=T,
        attempts=attempts,
        max_attempts=3,
        created_at=T,
        fence=fence,
        result=None if x is None else json.dumps({"x": x}).encode(),
        error=None if code is None else ErrorInfo(code, "E", "m", attempt=attempts, at=T),
        finished_at=finished if state != "queued" else None,
    )


def run(
    job: str,
    x: str,
    pid: int,
    t0: float,
    t1: float | None,
    *,
    fence: int = 1,
    attempt: int = 1,
    outcome: str = "ok",
    acked: bool = False,
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"ev": "start", "job": job, "x": x, "pid": pid, "t": t0, "fence": fence, "attempt": attempt}
    ]
    if t1 is not None:
        out.append({"ev": "end", "job": job, "x": x, "pid": pid, "t": t1, "outcome": outcome})
    if acked:
        out.append({"ev": "acked", "job": job, "x": x, "pid": pid, "t": (t1 or t0) + 0.01})
    return out


def test_a_clean_history_is_clean() -> None:
    events = run("j1", "a", 1, T, T + 1, acked=True)
    v = check({"j1": COMPLETED}, {"j1": rec("j1")}, events, FaultLog(), grace=3)
    v.assert_clean()
    assert v.summary()["completed"] == 1 and v.executions == 1 and v.duplicated_jobs == 0


def test_lost_and_unexpected_jobs() -> None:
    records = {"j1": rec("j1", "queued", x=None), "zz": rec("zz")}
    events = run("j1", "a", 1, T, None) + run("j3", "c", 1, T, T + 1)
    v = check({"j1": COMPLETED, "j2": COMPLETED}, records, events, FaultLog(), grace=3)
    bad = v.violations()
    assert len(bad["lost"]) == 2  # j1 still queued, j2 missing
    assert len(bad["unexpected"]) == 2  # zz stored, j3 ran


def test_double_completion_and_healthy_overlap() -> None:
    events = run("j1", "a", 1, T, T + 5, acked=True) + run("j1", "b", 2, T + 1, T + 2, fence=2)
    events.append({"ev": "acked", "job": "j1", "x": "b", "pid": 2, "t": T + 2})
    v = check({"j1": COMPLETED}, {"j1": rec("j1", x="a", fence=2)}, events, FaultLog(), grace=3)
    bad = v.violations()
    assert set(bad) >= {"completed_twice", "overlap", "stale_winner", "unexplained"}


def test_a_killed_worker_explains_its_duplicate() -> None:
    faults = FaultLog()
    faults.killed(1, T + 1)
    events = run("j1", "a", 1, T, None) + run(
        "j1", "b", 2, T + 4, T + 5, fence=2, attempt=2, acked=True
    )
    records = {"j1": rec("j1", x="b", fence=2, attempts=2)}
    v = check({"j1": COMPLETED}, records, events, faults, grace=3)
    v.assert_clean()
    assert v.duplicate_runs == {"killed": 1} and v.duplicated_jobs == 1
    rec_times = recovery_times(events, faults, records)
    assert rec_times["rerun_after_kill_s"]["max"] == 3.0


def test_a_pause_explains_an_overlap_only_within_its_window() -> None:
    events = run("j1", "a", 1, T, T + 8) + run("j1", "b", 2, T + 4, T + 5, fence=2, acked=True)
    records = {"j1": rec("j1", x="b", fence=2)}
    paused = FaultLog()
    paused.add("paused", [1], T + 0.5, T + 4.5)
    v = check({"j1": COMPLETED}, records, events, paused, grace=3)
    v.assert_clean()
    assert v.overlaps_explained == 1 and v.duplicate_runs == {"paused": 1}
    far = FaultLog()
    far.add("paused", [1], T + 50, T + 60)
    assert "overlap" in check({"j1": COMPLETED}, records, events, far, grace=3).violations()


def test_retries_timeouts_and_expected_failures() -> None:
    events = (
        run("j1", "a", 1, T, T + 1, outcome="error")
        + run("j1", "b", 1, T + 2, T + 3, outcome="error", attempt=2)
        + run("j2", "c", 1, T, T + 1, outcome="cancelled")
        + [{"ev": "fail_acked", "job": "j2", "attempt": 1, "code": "timeout"}]
    )
    records = {
        "j1": rec("j1", "failed", x=None, attempts=2, code="error"),
        "j2": rec("j2", "failed", x=None, code="timeout"),
    }
    expected = {
        "j1": Expect.of("failed", codes=["error"]),
        "j2": Expect.of("failed", codes=["timeout"]),
    }
    v = check(expected, records, events, FaultLog(), grace=3)
    v.assert_clean()
    assert v.retries == 2 and v.duplicated_jobs == 0
    wrong = check({"j1": Expect.of("failed", codes=["poison_message"])}, records, events,
                  FaultLog(), grace=3, ambiguous=["j2"])  # fmt: skip
    assert list(wrong.violations()) == ["wrong_outcome"]


def test_a_run_after_completion_is_caught() -> None:
    events = run("j1", "a", 1, T, T + 1, acked=True) + run("j1", "b", 2, T + 20, T + 21)
    v = check({"j1": COMPLETED}, {"j1": rec("j1", finished=T + 1.1)}, events, FaultLog(), grace=3)
    assert "ran_after_completion" in v.violations()


def test_a_completion_no_run_produced_is_caught() -> None:
    events = run("j1", "a", 1, T, None)
    v = check({"j1": COMPLETED}, {"j1": rec("j1", x="a")}, events, FaultLog(), grace=3)
    assert "no_winner" in v.violations()


def test_a_worker_killed_between_handler_and_ack_explains_its_rerun() -> None:
    faults = FaultLog()
    faults.killed(1, T + 5)  # well after the handler returned (more than the grace)
    events = run("j1", "a", 1, T, T + 1) + run(
        "j1", "b", 2, T + 8, T + 9, fence=2, attempt=2, acked=True
    )
    records = {"j1": rec("j1", x="b", fence=2, attempts=2)}
    v = check({"j1": COMPLETED}, records, events, faults, grace=3)
    v.assert_clean()
    assert v.duplicate_runs == {"killed_before_ack": 1}
    assert recovery_times(events, faults, records)["jobs_in_flight_at_kills"] == 1
    # The same history without the kill is a duplicate nobody can explain.
    assert (
        "unexplained" in check({"j1": COMPLETED}, records, events, FaultLog(), grace=3).violations()
    )
