"""The checker: from the handlers' ledger, the faults the test injected and the store's final
state, account for every job (after Jepsen's ``total-queue`` and the lease-queue checkers of
``queue-engineering.md`` §4.7).

Inputs
    ``enqueued``  every job whose enqueue was acknowledged, with what its end must be
    ``ambiguous`` jobs whose enqueue raised (it may or may not have been stored)
    ``records``   the store after a full drain (every job in it)
    ``events``    the ledger (see :mod:`tests.reliability.apps`)
    ``faults``    what the test did to which process and when (:class:`FaultLog`)

Per job it computes executions, the committed completion (and which run produced it), retries,
duplicate runs with the reason each is explained by, refused (lease-lost) acknowledgements and
overlaps (two runs of one job at the same time). A run is *explained* when its worker was not
healthy around it: killed, paused, cut off from the store, the store itself down, its event loop
blocked by the handler, or shut down (hand-back). Everything else is a violation:

``lost``                 acknowledged at enqueue, never reached a terminal state (or vanished)
``unexpected``           a job nobody enqueued, or a ledger entry for one
``wrong_outcome``        a terminal state or error code other than the scenario expects
``unexplained``          a duplicate run on a healthy worker
``completed_twice``      two completions stored for one job
``stale_winner``         the stored result came from a run whose lease had been superseded
``ran_after_completion`` a run started after the job's completion was stored
``overlap``              two runs at once while both workers were healthy
``no_winner``            a completed job whose stored result names no run that returned
"""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from conveyor.domain.job import JobRecord
from conveyor.domain.states import JobState

TERMINAL = {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.EXPIRED}
#: Reasons that are not duplicates: the run was meant to be followed by another.
NOT_DUPLICATE = {"retry", "timeout", "cancelled"}


@dataclass(frozen=True)
class Expect:
    """What a job's end must look like: one of ``states`` and, if set, one of ``codes``."""

    states: frozenset[str] = frozenset({"completed"})
    codes: frozenset[str] | None = None

    @classmethod
    def of(cls, *states: str, codes: Iterable[str] | None = None) -> Expect:
        return cls(frozenset(states), None if codes is None else frozenset(codes))

    def allows(self, rec: JobRecord) -> bool:
        if rec.state.value not in self.states:
            return False
        if self.codes is None or rec.state is JobState.COMPLETED:
            return True
        return rec.error is not None and rec.error.code in self.codes

    def describe(self) -> str:
        codes = f" ({'/'.join(sorted(self.codes))})" if self.codes else ""
        return "/".join(sorted(self.states)) + codes


COMPLETED = Expect.of("completed")


# -- faults ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fault:
    """Something done to processes: ``pids`` empty means every process (the store was down).
    ``t1`` ``None``: from ``t0`` on (the process is dead)."""

    kind: str
    pids: tuple[int, ...]
    t0: float
    t1: float | None


@dataclass
class FaultLog:
    """What the test did, when (real wall-clock seconds, like the ledger)."""

    faults: list[Fault] = field(default_factory=list)

    def add(self, kind: str, pids: Iterable[int], t0: float, t1: float | None) -> Fault:
        fault = Fault(kind, tuple(pids), t0, t1)
        self.faults.append(fault)
        return fault

    def killed(self, pid: int, t: float) -> None:
        self.add("killed", [pid], t, None)

    def died(self, pid: int, t: float) -> None:
        if not any(f.t1 is None and pid in f.pids for f in self.faults):
            self.add("died", [pid], t, None)

    def kill_time(self, pid: int) -> float | None:
        times = [f.t0 for f in self.faults if f.t1 is None and pid in f.pids]
        return min(times) if times else None

    def kills(self) -> list[Fault]:
        return [f for f in self.faults if f.kind == "killed"]

    def unhealthy(self, pid: int, t0: float, t1: float, grace: float) -> str | None:
        """The kind of the first fault that touched ``pid`` between ``t0`` and ``t1``.

        A window fault counts until ``grace`` seconds after it ended: that long a worker may
        run on before its next heartbeat tells it the lease is gone.
        """
        for fault in self.faults:
            if fault.pids and pid not in fault.pids:
                continue
            end = float("inf") if fault.t1 is None else fault.t1 + grace
            if fault.t0 <= t1 and t0 <= end:
                return fault.kind
        return None

    def to_json(self) -> list[dict[str, Any]]:
        return [f.__dict__ for f in self.faults]


# -- runs -----------------------------------------------------------------------------------
@dataclass
class Run:
    """One execution of a handler, from the ledger."""

    job: str
    x: str
    pid: int
    attempt: int | None
    fence: int | None
    t0: float
    t1: float | None = None
    outcome: str | None = None  # ok | error | retry | cancelled | None (never ended)
    reason: str | None = None  # why a cancelled run was cancelled

    def end(self, faults: FaultLog, horizon: float) -> float:
        if self.t1 is not None:
            return self.t1
        died = faults.kill_time(self.pid)
        return died if died is not None else horizon


def runs_by_job(events: Iterable[Mapping[str, Any]]) -> dict[str, list[Run]]:
    runs: dict[str, Run] = {}
    for e in events:
        if e.get("ev") == "start" and e.get("job"):
            runs[e["x"]] = Run(e["job"], e["x"], e["pid"], e.get("attempt"), e.get("fence"), e["t"])
        elif e.get("ev") == "end" and e.get("x") in runs:
            run = runs[e["x"]]
            run.t1, run.outcome, run.reason = e["t"], e.get("outcome"), e.get("reason")
    grouped: dict[str, list[Run]] = defaultdict(list)
    for run in runs.values():
        grouped[run.job].append(run)
    for job_runs in grouped.values():
        job_runs.sort(key=lambda r: r.t0)
    return dict(grouped)


def blocked_windows(events: Iterable[Mapping[str, Any]], faults: FaultLog) -> None:
    """Handlers that held their event loop make their worker unhealthy for that time."""
    for e in events:
        if e.get("ev") == "block":
            faults.add("blocked_loop", [e["pid"]], e["t0"], e["t1"])


# -- the verdict ----------------------------------------------------------------------------
@dataclass
class JobAccount:
    id: str
    state: str
    code: str | None
    executions: int
    retries: int
    duplicates: list[str]
    acks: int
    lease_lost_acks: int


@dataclass
class Verdict:
    enqueued: int = 0
    ambiguous_enqueues: int = 0
    ambiguous_stored: int = 0
    states: Counter[str] = field(default_factory=Counter)
    executions: int = 0
    retries: int = 0
    duplicate_runs: Counter[str] = field(default_factory=Counter)
    duplicated_jobs: int = 0
    acks: int = 0
    lease_lost_acks: int = 0
    heartbeat_lease_losses: int = 0
    handed_back: int = 0
    overlaps_explained: int = 0
    max_stalls_seen: int = 0
    problems: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    accounts: dict[str, JobAccount] = field(default_factory=dict)

    @property
    def lost(self) -> list[str]:
        return self.problems.get("lost", [])

    def violations(self) -> dict[str, list[str]]:
        return {k: v for k, v in self.problems.items() if v}

    def assert_clean(self) -> None:
        bad = self.violations()
        assert not bad, "checker violations:\n" + json.dumps(
            {
                k: v[:10] + ([f"... {len(v) - 10} more"] if len(v) > 10 else [])
                for k, v in bad.items()
            },
            indent=2,
        )

    def summary(self) -> dict[str, Any]:
        return {
            "enqueued": self.enqueued,
            "ambiguous_enqueues": self.ambiguous_enqueues,
            "ambiguous_stored": self.ambiguous_stored,
            "completed": self.states.get("completed", 0),
            "failed": self.states.get("failed", 0),
            "cancelled": self.states.get("cancelled", 0),
            "expired": self.states.get("expired", 0),
            "executions": self.executions,
            "retries": self.retries,
            "duplicated_jobs": self.duplicated_jobs,
            "duplicate_runs": dict(self.duplicate_runs),
            "lost": len(self.problems.get("lost", [])),
            "unexpected": len(self.problems.get("unexpected", [])),
            "acks": self.acks,
            "lease_lost_acks": self.lease_lost_acks,
            "heartbeat_lease_losses": self.heartbeat_lease_losses,
            "handed_back": self.handed_back,
            "overlaps_explained": self.overlaps_explained,
            "overlaps_healthy": len(self.problems.get("overlap", [])),
            "max_stalls_seen": self.max_stalls_seen,
            "violations": {k: len(v) for k, v in self.violations().items()},
        }


def _winner_token(rec: JobRecord) -> str | None:
    if rec.result is None:
        return None
    try:
        value = json.loads(rec.result)
    except ValueError:
        return None
    return value.get("x") if isinstance(value, dict) else None


def check(
    enqueued: Mapping[str, Expect],
    records: Mapping[str, JobRecord],
    events: list[dict[str, Any]],
    faults: FaultLog,
    *,
    grace: float,
    ambiguous: Iterable[str] = (),
    horizon: float | None = None,
) -> Verdict:
    """Account for every job (see the module docstring). ``grace``: how long after a window
    fault ends a worker may still run a job it lost (a lease plus a heartbeat or two)."""
    ambiguous = set(ambiguous) - set(enqueued)
    verdict = Verdict(enqueued=len(enqueued), ambiguous_enqueues=len(ambiguous))
    problems = verdict.problems
    blocked_windows(events, faults)
    horizon = (
        horizon if horizon is not None else max((e.get("t", 0.0) for e in events), default=0.0)
    )
    runs = runs_by_job(events)
    acked: Counter[str] = Counter()
    acked_x: set[str] = set()
    fail_acked: dict[tuple[str, int | None], str | None] = {}
    lease_lost: Counter[str] = Counter()
    for e in events:
        ev, job = e.get("ev"), e.get("job")
        if ev == "acked":
            acked[job] += 1
            acked_x.add(e.get("x"))
        elif ev == "fail_acked":
            fail_acked[(job, e.get("attempt"))] = e.get("code")
        elif ev == "ack_lost":
            lease_lost[job] += 1
            verdict.lease_lost_acks += 1
        elif ev == "hb_lost":
            verdict.heartbeat_lease_losses += 1
        elif ev == "handed_back":
            verdict.handed_back += 1

    known = set(enqueued) | ambiguous
    for job_id in sorted(set(records) - known):
        problems["unexpected"].append(f"{job_id}: in the store, never enqueued")
    for job_id in sorted(set(runs) - known):
        problems["unexpected"].append(f"{job_id}: ran, never enqueued")
    verdict.ambiguous_stored = len(ambiguous & set(records))

    for job_id in sorted(known):
        rec = records.get(job_id)
        if rec is None:
            if job_id in enqueued:
                problems["lost"].append(f"{job_id}: acknowledged at enqueue, not in the store")
            continue
        verdict.states[rec.state.value] += 1
        verdict.max_stalls_seen = max(verdict.max_stalls_seen, rec.stalls)
        if rec.state not in TERMINAL:
            problems["lost"].append(f"{job_id}: still {rec.state.value} after the drain")
            continue
        expect = enqueued.get(job_id, COMPLETED)
        if not expect.allows(rec):
            code = rec.error.code if rec.error else None
            problems["wrong_outcome"].append(
                f"{job_id} ({rec.task}): {rec.state.value}/{code}, expected {expect.describe()}"
            )
        job_runs = runs.get(job_id, [])
        verdict.executions += len(job_runs)
        verdict.acks += acked[job_id]
        if acked[job_id] > 1:
            problems["completed_twice"].append(f"{job_id}: {acked[job_id]} stored completions")
        winner = None
        token = _winner_token(rec) if rec.state is JobState.COMPLETED else None
        if token is not None:
            winner = next((r for r in job_runs if r.x == token), None)
            if winner is None or winner.outcome != "ok":
                problems["no_winner"].append(f"{job_id}: result names run {token}: {winner}")
            else:
                if winner.fence is not None and winner.fence != rec.fence:
                    problems["stale_winner"].append(
                        f"{job_id}: result from fence {winner.fence}, job fence {rec.fence}"
                    )
                late = [
                    r
                    for r in job_runs
                    if rec.finished_at is not None and r.t0 > rec.finished_at + 0.01
                ]
                if late:
                    problems["ran_after_completion"].append(
                        f"{job_id}: {len(late)} run(s) started after completion "
                        f"(pids {[r.pid for r in late]})"
                    )
        reasons: list[str] = []
        for run in job_runs:
            if run is winner:
                continue
            reason = _why(run, job_id, fail_acked, acked_x, faults, grace, horizon)
            if reason in NOT_DUPLICATE:
                verdict.retries += reason == "retry"
                continue
            reasons.append(reason)
            verdict.duplicate_runs[reason] += 1
            if reason == "unexplained":
                problems["unexplained"].append(
                    f"{job_id}: run {run.x} on pid {run.pid} (attempt {run.attempt}, "
                    f"{run.outcome}) on a healthy worker"
                )
        if reasons:
            verdict.duplicated_jobs += 1
        _overlaps(job_id, job_runs, faults, grace, horizon, verdict)
        verdict.accounts[job_id] = JobAccount(
            job_id,
            rec.state.value,
            rec.error.code if rec.error else None,
            len(job_runs),
            sum(1 for r in job_runs if r.outcome in ("error", "retry")),
            reasons,
            acked[job_id],
            lease_lost[job_id],
        )
    return verdict


def _why(
    run: Run,
    job_id: str,
    fail_acked: Mapping[tuple[str, int | None], str | None],
    acked_x: set[str],
    faults: FaultLog,
    grace: float,
    horizon: float,
) -> str:
    """Why a run that did not produce the job's outcome happened (see the module docstring)."""
    if fail_acked.get((job_id, run.attempt)) == "timeout":
        return "timeout"  # failed by its deadline (a thread handler may have run on)
    if run.outcome in ("error", "retry"):
        return "retry"
    if run.outcome == "cancelled" and run.reason == "shutdown":
        return "handed_back"
    end = run.end(faults, horizon)
    if run.outcome == "ok" and run.x not in acked_x:
        end += grace  # its outcome was still on the way to the store for a while
    fault = faults.unhealthy(run.pid, run.t0, end, grace)
    if fault is not None:
        return fault
    died = faults.kill_time(run.pid)
    if run.outcome == "ok" and run.x not in acked_x and died is not None and died >= run.t0:
        # T2: the handler returned, the worker died before its completion was stored.
        return "killed_before_ack"
    if run.outcome == "cancelled" and run.reason not in (None, "lease_lost"):
        return "cancelled"
    return "unexplained"


def _overlaps(
    job_id: str, runs: list[Run], faults: FaultLog, grace: float, horizon: float, verdict: Verdict
) -> None:
    for i, a in enumerate(runs):
        a_end = a.end(faults, horizon)
        for b in runs[i + 1 :]:
            if b.t0 >= a_end:
                continue
            overlap_end = min(a_end, b.end(faults, horizon))
            if faults.unhealthy(a.pid, a.t0, overlap_end, grace) or faults.unhealthy(
                b.pid, a.t0, overlap_end, grace
            ):
                verdict.overlaps_explained += 1
                continue
            verdict.problems["overlap"].append(
                f"{job_id}: runs on pids {a.pid} and {b.pid} overlapped "
                f"{overlap_end - b.t0:.3f}s (attempts {a.attempt}, {b.attempt})"
            )


# -- recovery after a kill ------------------------------------------------------------------
def recovery_times(
    events: list[dict[str, Any]], faults: FaultLog, records: Mapping[str, JobRecord]
) -> dict[str, Any]:
    """For each job a killed worker was running: seconds from the kill to the next run
    elsewhere, and to the job's end."""
    runs = runs_by_job(events)
    acked_x = {e.get("x") for e in events if e.get("ev") == "acked"}
    rerun: list[float] = []
    finished: list[float] = []
    in_flight = 0
    for fault in faults.kills():
        (pid,) = fault.pids
        for job_id, job_runs in runs.items():
            held = [
                r
                for r in job_runs
                if r.pid == pid
                and r.t0 <= fault.t0
                and (r.t1 is None or r.t1 > fault.t0 or r.x not in acked_x)
            ]
            if not held:
                continue
            in_flight += 1
            later = [r.t0 for r in job_runs if r.pid != pid and r.t0 > fault.t0]
            if later:
                rerun.append(min(later) - fault.t0)
            rec = records.get(job_id)
            if rec is not None and rec.finished_at is not None:
                finished.append(rec.finished_at - fault.t0)
    return {
        "kills": len(faults.kills()),
        "jobs_in_flight_at_kills": in_flight,
        "rerun_after_kill_s": _stats(rerun),
        "finished_after_kill_s": _stats(finished),
    }


def _stats(values: list[float]) -> dict[str, float | int] | None:
    if not values:
        return None
    return {
        "n": len(values),
        "median": round(statistics.median(values), 3),
        "max": round(max(values), 3),
    }
