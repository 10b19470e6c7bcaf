"""Autoscaling decisions: how many worker processes a group should run, from queue load.

Pure rules (no I/O, time passed in), used by the supervisor of ``conveyor worker
--autoscale MIN:MAX`` and configurable per queue (``app.queue(..., autoscale=...)``, seed 000's
``QueueConfig.autoScale``).

The rule, per sample of the consumed queues' load (ready jobs, running jobs, the oldest ready
job's age):

* ``need`` = ``ceil((ready + running) / jobs_per_worker)``: processes that give every job
  that could run now a slot.
* **Grow** when ``need`` exceeds the current size, or when the oldest ready job has waited
  ``target_wait`` or longer (latency first: depth alone ignores how long jobs take); the new
  size is ``need`` (at least one more when the wait is too long), at most ``max_workers``.
* **Shrink** by one process when the load has fitted in fewer processes (``need`` below the
  current size) and nothing has waited more than half of ``target_wait``, continuously for
  ``scale_down_after`` seconds. Growing needs one sample, shrinking a quiet stretch: that
  asymmetry and the gap between the two conditions are the hysteresis that keeps a group from
  flapping.
* Between two changes at least ``cooldown`` seconds pass (a new process needs a moment to
  start and claim before its effect shows), except to get back inside ``min..max``.

A shrink never interrupts a job: the supervisor retires a process (it stops claiming and
finishes what it runs, however long that takes), preferring an idle one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from conveyor.domain.durations import Duration, parse_duration


@dataclass(frozen=True, slots=True)
class AutoscalePolicy:
    """How a group of worker processes grows and shrinks (see the module docstring).

    ``min_workers``/``max_workers``: bounds on the number of processes. ``target_wait``:
    seconds the oldest ready job may wait before the group grows. ``jobs_per_worker``: jobs
    one process is expected to hold (``None``: its ``--concurrency``). ``scale_down_after``:
    seconds of low load before one process is retired. ``cooldown``: least seconds between
    two changes. ``interval``: seconds between two load samples.
    """

    min_workers: int = 1
    max_workers: int = 4
    target_wait: float = 10.0
    jobs_per_worker: int | None = None
    scale_down_after: float = 60.0
    cooldown: float = 10.0
    interval: float = 2.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_workers <= self.max_workers or self.max_workers < 1:
            raise ValueError(
                f"autoscale bounds must satisfy 0 <= min <= max and max >= 1; got "
                f"{self.min_workers}:{self.max_workers}"
            )
        if self.jobs_per_worker is not None and self.jobs_per_worker < 1:
            raise ValueError("autoscale jobs_per_worker must be >= 1")
        for name in ("target_wait", "scale_down_after", "cooldown"):
            if getattr(self, name) < 0:
                raise ValueError(f"autoscale {name} must be >= 0 seconds")
        if self.interval <= 0:
            raise ValueError("autoscale interval must be > 0 seconds")

    @classmethod
    def build(
        cls,
        min_workers: int = 1,
        max_workers: int = 4,
        *,
        target_wait: Duration = 10.0,
        jobs_per_worker: int | None = None,
        scale_down_after: Duration = 60.0,
        cooldown: Duration = 10.0,
        interval: Duration = 2.0,
    ) -> AutoscalePolicy:
        """A policy with durations as seconds, ``timedelta`` or strings like ``"30s"``."""
        return cls(
            min_workers=min_workers,
            max_workers=max_workers,
            target_wait=parse_duration(target_wait, field="autoscale target_wait"),
            jobs_per_worker=jobs_per_worker,
            scale_down_after=parse_duration(scale_down_after, field="autoscale scale_down_after"),
            cooldown=parse_duration(cooldown, field="autoscale cooldown"),
            interval=parse_duration(interval, field="autoscale interval"),
        )

    @classmethod
    def merge(cls, policies: Sequence[AutoscalePolicy]) -> AutoscalePolicy:
        """One policy for a group consuming queues with these policies: the widest bounds,
        the strictest wait target and jobs per worker, the most patient shrinking, the
        longest cooldown and the most frequent sampling."""
        if not policies:
            return cls()
        per = [p.jobs_per_worker for p in policies if p.jobs_per_worker is not None]
        return cls(
            min_workers=max(p.min_workers for p in policies),
            max_workers=max(p.max_workers for p in policies),
            target_wait=min(p.target_wait for p in policies),
            jobs_per_worker=min(per) if per else None,
            scale_down_after=max(p.scale_down_after for p in policies),
            cooldown=max(p.cooldown for p in policies),
            interval=min(p.interval for p in policies),
        )

    @staticmethod
    def parse_bounds(text: str) -> tuple[int, int]:
        """``"MIN:MAX"`` (``--autoscale 1:8``) as two integers; ``ValueError`` otherwise."""
        lo, sep, hi = text.partition(":")
        if not sep or not lo.strip().isdigit() or not hi.strip().isdigit():
            raise ValueError(f"expected MIN:MAX with two whole numbers (e.g. 1:8), got {text!r}")
        return int(lo), int(hi)

    def to_seed000(self) -> dict[str, Any]:
        """Seed 000's ``QueueConfig.autoScale`` object (the seed leaves its fields open; these
        are Conveyor's, documented in ``docs/scaling.md``)."""
        out: dict[str, Any] = {
            "minWorkers": self.min_workers,
            "maxWorkers": self.max_workers,
            "targetWaitMs": round(self.target_wait * 1000),
            "scaleDownAfterMs": round(self.scale_down_after * 1000),
            "cooldownMs": round(self.cooldown * 1000),
            "intervalMs": round(self.interval * 1000),
        }
        if self.jobs_per_worker is not None:
            out["jobsPerWorker"] = self.jobs_per_worker
        return out

    @classmethod
    def from_seed000(cls, data: dict[str, Any]) -> AutoscalePolicy:
        """The inverse of :meth:`to_seed000` (absent fields take the defaults)."""
        d = cls()

        def ms(key: str, default: float) -> float:
            return float(data[key]) / 1000 if key in data else default

        return cls(
            min_workers=int(data.get("minWorkers", d.min_workers)),
            max_workers=int(data.get("maxWorkers", d.max_workers)),
            target_wait=ms("targetWaitMs", d.target_wait),
            jobs_per_worker=data.get("jobsPerWorker"),
            scale_down_after=ms("scaleDownAfterMs", d.scale_down_after),
            cooldown=ms("cooldownMs", d.cooldown),
            interval=ms("intervalMs", d.interval),
        )


@dataclass(frozen=True, slots=True)
class LoadSample:
    """The consumed queues' load, summed: ready jobs, running jobs, and the largest oldest-age
    (seconds; ``None`` when nothing is ready)."""

    ready: int
    running: int
    oldest_age: float | None


@dataclass(frozen=True, slots=True)
class ScaleState:
    """What the rule remembers between samples: since when the load has been low, and when
    the size last changed (seconds on the caller's monotonic clock)."""

    low_since: float | None = None
    last_change: float | None = None


@dataclass(frozen=True, slots=True)
class ScaleDecision:
    """The size to run now, why (empty when unchanged), and the state to pass next time."""

    size: int
    reason: str
    state: ScaleState


def decide(
    policy: AutoscalePolicy,
    current: int,
    sample: LoadSample,
    now: float,
    state: ScaleState,
    concurrency: int,
) -> ScaleDecision:
    """The size a group of ``current`` processes (``concurrency`` slots each) should have
    after ``sample`` at ``now`` (see the module docstring)."""
    lo, hi = policy.min_workers, policy.max_workers
    if current < lo or current > hi:
        size = min(max(current, lo), hi)
        reason = f"outside the bounds {lo}:{hi}"
        return ScaleDecision(size, reason, ScaleState(None, now))
    per = policy.jobs_per_worker or max(concurrency, 1)
    need = math.ceil((sample.ready + sample.running) / per)
    age = sample.oldest_age
    waited_too_long = sample.ready > 0 and age is not None and age >= policy.target_wait
    cooling = state.last_change is not None and now - state.last_change < policy.cooldown
    load = f"ready {sample.ready}, running {sample.running}, oldest wait {_secs(age)}"
    if need > current or waited_too_long:
        want = min(max(need, current + 1) if waited_too_long else need, hi)
        if want > current and not cooling:
            why = "oldest wait over target" if waited_too_long else f"{need} needed"
            return ScaleDecision(want, f"{load}: {why}", ScaleState(None, now))
        return ScaleDecision(current, "", ScaleState(None, state.last_change))
    quiet = need < current and (age is None or age < policy.target_wait / 2)
    if not quiet or current <= lo:
        return ScaleDecision(current, "", ScaleState(None, state.last_change))
    low_since = state.low_since if state.low_since is not None else now
    if now - low_since >= policy.scale_down_after and not cooling:
        why = f"{load}: {need} needed for {_secs(now - low_since)}"
        return ScaleDecision(current - 1, why, ScaleState(None, now))
    return ScaleDecision(current, "", ScaleState(low_since, state.last_change))


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"
