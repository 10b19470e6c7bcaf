"""Prometheus metrics (``conveyor[web]``).

Two kinds, as the naming guide separates them:

- **Per worker process** (:class:`WorkerMetrics`, served by ``conveyor worker --metrics-port``):
  ``conveyor_jobs_finished_total``, ``conveyor_job_retries_total``,
  ``conveyor_dead_letters_total``, ``conveyor_job_duration_seconds`` (histogram, 5 ms to
  15 min), ``conveyor_worker_slots``. With ``--processes N`` every process writes to a shared
  ``PROMETHEUS_MULTIPROC_DIR`` and the supervisor serves the sum.
- **Cluster-wide, read from the store** (:class:`StoreCollector`, served by the dashboard's
  ``/metrics``): ``conveyor_jobs``, ``conveyor_queue_depth``,
  ``conveyor_queue_oldest_age_seconds``, ``conveyor_dead_letters``, ``conveyor_workers``,
  ``conveyor_cluster_worker_slots``. Read at most once per ``min_interval`` whatever the
  scrape rate, and only by whoever serves the dashboard (not by every worker).

Every metric is listed in ``docs/metrics.md``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from conveyor.web.reads import Reads

#: Job durations reach minutes: buckets from 5 ms to 15 min.
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    600.0, 900.0,
)  # fmt: skip
#: Per (queue, state), counts are exact up to this many jobs (then a lower bound).
METRICS_COUNT_CAP = 100_000


def multiprocess_dir() -> str | None:
    """``PROMETHEUS_MULTIPROC_DIR`` when set (multiprocess mode)."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def exposition(registry: CollectorRegistry | None = None) -> bytes:
    """The text exposition of ``registry``; in multiprocess mode, of every process's files."""
    if registry is None:
        registry = CollectorRegistry()
        if multiprocess_dir():
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


class _Worker(Protocol):
    """What worker metrics read of a running worker."""

    config: Any
    active: dict[str, Any]
    stats: Any


class WorkerMetrics:
    """Outcome counters, durations and slots of the worker in this process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        reg = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.registry = reg
        labels = ("queue", "task")
        self.finished = Counter(
            "conveyor_jobs_finished",
            "Job attempts finished, by outcome (succeeded, retried, dead, cancelled).",
            (*labels, "outcome"),
            registry=reg,
        )
        self.retries = Counter(
            "conveyor_job_retries", "Failed attempts that will be retried.", labels, registry=reg
        )
        self.dead = Counter(
            "conveyor_dead_letters",
            "Jobs that failed for good (moved to the dead-letter set).",
            labels,
            registry=reg,
        )
        self.duration = Histogram(
            "conveyor_job_duration_seconds",
            "Run time of finished job attempts.",
            labels,
            buckets=DURATION_BUCKETS,
            registry=reg,
        )
        self.slots = Gauge(
            "conveyor_worker_slots",
            "Worker job slots, busy or free.",
            ("state",),
            registry=reg,
            multiprocess_mode="livesum",
        )

    def observe(self, task: str, queue: str, outcome: str, duration: float) -> None:
        """A worker outcome (the worker's stats observer)."""
        if outcome == "handed_back":
            return
        self.finished.labels(queue, task, outcome).inc()
        self.duration.labels(queue, task).observe(duration)
        if outcome == "retried":
            self.retries.labels(queue, task).inc()
        elif outcome == "dead":
            self.dead.labels(queue, task).inc()

    def attach(self, worker: _Worker) -> None:
        """Observe ``worker``'s outcomes (its slots are sampled by :meth:`sample_slots`)."""
        worker.stats.observers.append(self.observe)
        self.sample_slots(worker)

    def sample_slots(self, worker: _Worker) -> None:
        busy = len(worker.active)
        self.slots.labels("busy").set(busy)
        self.slots.labels("free").set(max(worker.config.concurrency - busy, 0))

    async def run_sampler(self, worker: _Worker, interval: float = 1.0) -> None:
        """Keep the slot gauges current (cancel to stop)."""
        while True:
            self.sample_slots(worker)
            await asyncio.sleep(interval)

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        """Serve ``/metrics`` on ``port`` in a daemon thread (single-process mode)."""
        start_http_server(port, addr=host, registry=self.registry)


def serve_multiprocess(port: int, host: str = "0.0.0.0") -> None:
    """Serve the sum of every process's metrics from ``PROMETHEUS_MULTIPROC_DIR``."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    start_http_server(port, addr=host, registry=registry)


class StoreCollector(Collector):
    """Cluster-wide gauges read from the store at scrape time (cached ``min_interval`` s)."""

    def __init__(self, reads: Reads, min_interval: float = 5.0) -> None:
        self.reads = reads
        self.min_interval = min_interval
        self._cache: tuple[float, list[Metric]] | None = None
        self.last_scrape_seconds = 0.0

    async def refresh(self) -> list[Metric]:
        """Read the store now (or reuse a read younger than ``min_interval``)."""
        if self._cache is not None and time.monotonic() - self._cache[0] < self.min_interval:
            return self._cache[1]
        started = time.perf_counter()
        browser = await self.reads.browser()
        counts = await browser.count_states(METRICS_COUNT_CAP)
        oldest = await browser.oldest_queued()
        workers = await self.reads.app.inspect.workers()
        now = self.reads.app.now()
        jobs = GaugeMetricFamily(
            "conveyor_jobs",
            f"Jobs in the store by queue and state (exact up to {METRICS_COUNT_CAP}).",
            labels=["queue", "state"],
        )
        depth = GaugeMetricFamily(
            "conveyor_queue_depth", "Jobs waiting to be claimed (queued).", labels=["queue"]
        )
        dead = GaugeMetricFamily(
            "conveyor_dead_letters", "Jobs in the dead-letter set (failed).", labels=["queue"]
        )
        for c in counts:
            jobs.add_metric([c.queue, c.state.value], c.count)
            if c.state.value == "queued":
                depth.add_metric([c.queue], c.count)
            elif c.state.value == "failed":
                dead.add_metric([c.queue], c.count)
        age = GaugeMetricFamily(
            "conveyor_queue_oldest_age_seconds",
            "How long the longest-waiting queued job has been claimable.",
            labels=["queue"],
        )
        for queue, run_at in sorted(oldest.items()):
            age.add_metric([queue], max(now - run_at, 0.0))
        alive = GaugeMetricFamily("conveyor_workers", "Workers with a recent heartbeat.")
        alive.add_metric([], len(workers))
        slots = GaugeMetricFamily(
            "conveyor_cluster_worker_slots",
            "Job slots of all live workers, busy or free.",
            labels=["state"],
        )
        busy = sum(int(w.stats.get("active", 0)) for w in workers)
        total = sum(w.concurrency for w in workers)
        slots.add_metric(["busy"], busy)
        slots.add_metric(["free"], max(total - busy, 0))
        self.last_scrape_seconds = time.perf_counter() - started
        took = GaugeMetricFamily(
            "conveyor_store_scrape_seconds", "Time the last read of the store's gauges took."
        )
        took.add_metric([], self.last_scrape_seconds)
        metrics: list[Metric] = [jobs, depth, dead, age, alive, slots, took]
        self._cache = (time.monotonic(), metrics)
        return metrics

    def collect(self) -> Iterator[Metric]:
        yield from self._cache[1] if self._cache is not None else ()

    def describe(self) -> Iterable[Metric]:
        return ()


async def store_exposition(collector: StoreCollector) -> bytes:
    """The dashboard's ``/metrics`` body: the store's gauges."""
    await collector.refresh()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)
