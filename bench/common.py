"""Helpers every benchmark process shares: records, percentiles, worker processes, RSS.

Standard library only: this module runs inside each peer library's own environment.
"""

from __future__ import annotations

import contextlib
import glob
import inspect
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from bench.recorder import RECORD

T = TypeVar("T")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Unsupported(Exception):
    """The library cannot run this workload; the message is the reason shown in the cell."""


async def maybe(value: T | Awaitable[T]) -> T:
    """Await ``value`` when a (sync or async) adapter method returned an awaitable."""
    if inspect.isawaitable(value):
        return await value  # type: ignore[no-any-return]
    return value


# -- records written by the benchmark tasks ---------------------------------------------------
def record_files(folder: str) -> list[str]:
    return glob.glob(os.path.join(folder, "records-*.bin"))


def count_records(folder: str) -> int:
    """How many jobs have started so far (cheap: file sizes only)."""
    total = 0
    for path in record_files(folder):
        with contextlib.suppress(FileNotFoundError):
            total += os.path.getsize(path) // RECORD.size
    return total


def read_records(folder: str) -> list[tuple[float, float]]:
    """Every ``(enqueued_at, started_at)`` record, in no particular order."""
    out: list[tuple[float, float]] = []
    for path in record_files(folder):
        with open(path, "rb") as fh:
            data = fh.read()
        usable = len(data) - len(data) % RECORD.size
        out.extend(RECORD.iter_unpack(data[:usable]))
    return out


def clear_records(folder: str) -> None:
    for path in record_files(folder):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def throughput(records: Sequence[tuple[float, float]]) -> float:
    """Jobs per second between the first and the last job start."""
    starts = sorted(r[1] for r in records)
    if len(starts) < 2 or starts[-1] <= starts[0]:
        return 0.0
    return (len(starts) - 1) / (starts[-1] - starts[0])


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile (0-100) by linear interpolation between closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * pct / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary(samples_ms: Sequence[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(samples_ms, 50),
        "p95_ms": percentile(samples_ms, 95),
        "p99_ms": percentile(samples_ms, 99),
        "mean_ms": statistics.fmean(samples_ms) if samples_ms else float("nan"),
        "samples": float(len(samples_ms)),
    }


# -- processes --------------------------------------------------------------------------------
def tree_rss_bytes(root: int) -> int:
    """Resident memory of ``root`` and all its descendants (from ``/proc``)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    total, todo = 0, [root]
    page = os.sysconf("SC_PAGE_SIZE")
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/statm", "rb") as fh:
                total += int(fh.read().split()[1]) * page
        except OSError:
            continue
        todo.extend(children.get(pid, ()))
    return total


@dataclass
class WorkerSpec:
    """How to start a library's worker: its own CLI, as a real process."""

    argv: list[str]
    label: str
    env: dict[str, str] = field(default_factory=dict)


class WorkerProcess:
    """A library worker started in its own session, so it and its children stop together."""

    def __init__(self, spec: WorkerSpec, env: dict[str, str], log_path: str) -> None:
        self.spec = spec
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            spec.argv,
            cwd=REPO,
            env={**env, **spec.env},
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.peak_rss = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def sample_rss(self) -> None:
        self.peak_rss = max(self.peak_rss, tree_rss_bytes(self.proc.pid))

    def stop(self, grace: float = 2.0) -> None:
        """SIGTERM the worker's process group, then SIGKILL it after ``grace`` seconds.

        The measurement is over when this is called, so a worker's graceful shutdown (which
        for some libraries waits many seconds) is cut short rather than waited for.
        """
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # Children (prefork pools, forked work horses) may outlive the leader: end the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self._log.close()

    def log_tail(self, limit: int = 1500) -> str:
        with contextlib.suppress(OSError), open(self.log_path, "rb") as fh:
            data = fh.read()
            return data[-limit:].decode("utf-8", "replace")
        return ""


def monotonic_deadline(seconds: float) -> float:
    return time.monotonic() + seconds
