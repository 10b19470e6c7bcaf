"""What a run measures: the sizes (full or smoke) and the rows of every table.

A *row* is one workload with its parameters (``process_c1`` is the ``process`` workload with
``mode=c1``); a *cell* is one library on one row on one backend, run ``iterations`` times.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Sizes:
    """How big each workload is; ``smoke`` keeps the whole suite to seconds per backend."""

    iterations: int
    enqueue_single: int
    enqueue_bulk: int
    process_c1: int
    process_high: int
    process_deadline: float
    latency_jobs: int
    latency_rate: float
    e2e_jobs: int
    memory_jobs: int
    limit_seconds: float
    cap: float  # seconds after which enqueue loops and round trips stop early


FULL = Sizes(
    iterations=3,
    enqueue_single=2000,
    enqueue_bulk=10000,
    process_c1=3000,
    process_high=10000,
    process_deadline=20.0,
    latency_jobs=600,
    latency_rate=100.0,
    e2e_jobs=300,
    memory_jobs=5000,
    limit_seconds=5.0,
    cap=15.0,
)

SMOKE = Sizes(
    iterations=1,
    enqueue_single=50,
    enqueue_bulk=100,
    process_c1=30,
    process_high=100,
    process_deadline=20.0,
    latency_jobs=20,
    latency_rate=100.0,
    e2e_jobs=5,
    memory_jobs=100,
    limit_seconds=0.5,
    cap=10.0,
)


@dataclass(frozen=True)
class Row:
    """One line of a results table."""

    key: str
    title: str
    workload: str
    metric: str  # the headline metric
    higher_is_better: bool
    unit: str
    params: tuple[tuple[str, Any], ...] = ()
    floors: bool = False  # the floor rows run here too
    repeat: bool = True  # False: one iteration is enough (deterministic sizes)

    def spec(self, sizes: Sizes) -> dict[str, Any]:
        """The cell parameters this row needs at these sizes."""
        out: dict[str, Any] = {"workload": self.workload, "cap": sizes.cap, **dict(self.params)}
        if self.workload == "enqueue_single":
            out["n"] = sizes.enqueue_single
        elif self.workload == "enqueue_bulk":
            out["n"] = sizes.enqueue_bulk
        elif self.workload == "process":
            out["n"] = sizes.process_c1 if out["mode"] == "c1" else sizes.process_high
            out["deadline"] = sizes.process_deadline
        elif self.workload == "latency":
            out["n"] = sizes.latency_jobs
            out["rate"] = sizes.latency_rate
        elif self.workload == "e2e":
            out["n"] = sizes.e2e_jobs
        elif self.workload == "memory":
            out["n"] = sizes.memory_jobs
        return out


ROWS: tuple[Row, ...] = (
    Row("enqueue_single", "enqueue, single", "enqueue_single", "jobs_per_s", True, "jobs/s"),
    Row("enqueue_bulk", "enqueue, bulk (50)", "enqueue_bulk", "jobs_per_s", True, "jobs/s"),
    Row(
        "process_c1",
        "process, concurrency 1",
        "process",
        "jobs_per_s",
        True,
        "jobs/s",
        (("mode", "c1"),),
        floors=True,
    ),
    Row(
        "process_high",
        "process, high concurrency",
        "process",
        "jobs_per_s",
        True,
        "jobs/s",
        (("mode", "high"),),
        floors=True,
    ),
    Row("latency", "latency, enqueue→start", "latency", "p99_ms", False, "ms"),
    Row("e2e", "end-to-end, enqueue→result", "e2e", "p99_ms", False, "ms"),
    Row(
        "memory_100",
        "store bytes per queued job, 100 B payload",
        "memory",
        "bytes_per_job",
        False,
        "B/job",
        (("payload", 100),),
        repeat=False,
    ),
    Row(
        "memory_1k",
        "store bytes per queued job, 1 KB payload",
        "memory",
        "bytes_per_job",
        False,
        "B/job",
        (("payload", 1000),),
        repeat=False,
    ),
)

ROWS_BY_KEY = {row.key: row for row in ROWS}

#: Rows Conveyor must win by 1.5× (issue 7's targets).
THROUGHPUT_ROWS = ("enqueue_single", "enqueue_bulk", "process_c1", "process_high")
FLOOR_LIBS = ("floor", "backend-loop")
