"""Run one benchmark cell (one library, one backend, one workload, one iteration).

``python -m bench.cell '<json spec>'`` runs in the library's own virtualenv, prints one line
``BENCH-RESULT <json>`` on stdout and exits. The harness starts one such process per cell, so
every cell starts from a fresh interpreter and a fresh slice of the store.

Workloads (``spec["workload"]``):

``enqueue_single``   ``n`` jobs, each enqueue awaited before the next → jobs/s
``enqueue_bulk``     ``n`` jobs in batches of 50 through the bulk API → jobs/s
``process``          ``n`` no-op jobs pre-enqueued, then the library's worker CLI started as a
                     process (``mode`` ``c1`` or ``high``) → jobs/s between the first and the
                     last job start, and the worker's peak RSS (its whole process tree)
``latency``          a worker running; jobs enqueued at ``rate`` per second carry their enqueue
                     time → enqueue-to-start p50/p95/p99 (ms)
``e2e``              a worker running; enqueue ``echo(x)`` and await its result, one at a time
                     → round-trip p50/p95/p99 (ms)
``memory``           ``n`` jobs with a ``payload``-byte string argument, no worker → store bytes
                     per queued job
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import random
import string
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any

from bench import adapters
from bench.adapters.base import Adapter
from bench.common import (
    Unsupported,
    WorkerProcess,
    count_records,
    latency_summary,
    maybe,
    read_records,
    throughput,
)
from bench.stores import Store, store_for

BATCH = 50
Result = dict[str, Any]


async def prefill(adapter: Adapter, task: str, args: Sequence[Any]) -> str:
    """Enqueue ``args`` as fast as the library allows (untimed); says how."""
    try:
        for start in range(0, len(args), BATCH):
            await maybe(adapter.enqueue_batch(task, args[start : start + BATCH]))
        return "bulk"
    except Unsupported:
        pass
    for start in range(0, len(args), BATCH):
        pending = [adapter.enqueue(task, a) for a in args[start : start + BATCH]]
        waits = [p for p in pending if inspect.isawaitable(p)]
        if waits:
            await asyncio.gather(*waits)
    return "single"


class Cell:
    """One cell's run: the adapter, its store and the worker process, if any."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.n: int = int(spec["n"])
        self.dir: str = spec["cell_dir"]
        self.records = os.path.join(self.dir, "records")
        os.makedirs(self.records, exist_ok=True)
        self.store: Store = store_for(spec)
        env = {
            **self.store.env(),
            "BENCH_RECORD_DIR": self.records,
            "BENCH_CONCURRENCY": "1" if spec.get("mode") == "c1" else "100",
            "BENCH_RESULTS": "1" if spec["workload"] == "e2e" else "0",
        }
        os.environ.update(env)
        self.env = dict(os.environ)
        self.adapter = adapters.load(spec["lib"], spec, self.store)
        self.worker: WorkerProcess | None = None
        self._closed = False

    async def close_adapter(self) -> None:
        """Close the producer once; a close that hangs must not hang the cell."""
        if not self._closed:
            self._closed = True
            try:
                await asyncio.wait_for(maybe(self.adapter.close()), 20)
            except TimeoutError:
                sys.stderr.write("the adapter's close() did not return within 20s\n")

    async def run(self) -> Result:
        self.store.prepare()
        try:
            await maybe(self.adapter.setup())
            handler = getattr(self, "w_" + self.spec["workload"])
            result: Result = await handler()
            return result
        finally:
            if self.worker is not None:
                self.worker.stop()
            try:
                await self.close_adapter()
            finally:
                self.store.cleanup()

    # -- enqueueing -------------------------------------------------------------------------
    @property
    def cap(self) -> float:
        """Seconds after which a timed loop stops early (slow libraries), reported in a note."""
        return float(self.spec.get("cap", 15.0))

    def capped(self, done: int, total: int, what: str = "jobs") -> str:
        return (
            f"stopped at the {self.cap:.0f}s cap after {done}/{total} {what}"
            if done < total
            else ""
        )

    async def w_enqueue_single(self) -> Result:
        enqueue = self.adapter.enqueue
        for _ in range(min(20, max(self.n // 10, 1))):
            await maybe(enqueue("noop", 0.0))
        start = time.perf_counter()
        stop = start + self.cap
        done = 0
        while done < self.n:
            result = enqueue("noop", 0.0)
            if inspect.isawaitable(result):
                await result
            done += 1
            if time.perf_counter() > stop:
                break
        elapsed = time.perf_counter() - start
        return {"metrics": {"jobs_per_s": done / elapsed}, "note": self.capped(done, self.n)}

    async def w_enqueue_bulk(self) -> Result:
        batch = [0.0] * BATCH
        await maybe(self.adapter.enqueue_batch("noop", batch))
        rounds = max(self.n // BATCH, 1)
        start = time.perf_counter()
        stop = start + self.cap
        done = 0
        while done < rounds:
            await maybe(self.adapter.enqueue_batch("noop", batch))
            done += 1
            if time.perf_counter() > stop:
                break
        elapsed = time.perf_counter() - start
        note = "; ".join(
            n for n in (self.adapter.bulk_note, self.capped(done, rounds, "batches")) if n
        )
        return {"metrics": {"jobs_per_s": done * BATCH / elapsed}, "note": note}

    # -- workers ----------------------------------------------------------------------------
    def start_worker(self, mode: str) -> WorkerProcess:
        spec = self.adapter.worker(mode)
        self.worker = WorkerProcess(spec, self.env, os.path.join(self.dir, "worker.log"))
        return self.worker

    async def wait_for_records(self, target: int, seconds: float, sample: bool = False) -> int:
        """Poll until ``target`` jobs started, the worker died or ``seconds`` passed."""
        assert self.worker is not None
        deadline = time.monotonic() + seconds
        tick = 0
        while True:
            count = count_records(self.records)
            if count >= target:
                return count
            if not self.worker.alive():
                raise RuntimeError(
                    f"the worker exited ({self.worker.proc.returncode}) after {count} of "
                    f"{target} jobs: {self.worker.log_tail()}"
                )
            if time.monotonic() > deadline:
                return count
            if sample and tick % 5 == 0:
                self.worker.sample_rss()
            tick += 1
            await asyncio.sleep(0.02)

    async def w_process(self) -> Result:
        mode = self.spec["mode"]
        how = await prefill(self.adapter, "noop", [0.0] * self.n)
        worker = self.start_worker(mode)
        seconds = float(self.spec["deadline"])
        done = await self.wait_for_records(self.n, seconds, sample=True)
        worker.sample_rss()
        records = read_records(self.records)
        if done < 2:
            raise RuntimeError(
                f"only {done} of {self.n} jobs ran in {seconds:.0f}s: {worker.log_tail()}"
            )
        note = worker.spec.label
        if done < self.n:
            note += f"; stopped after {seconds:.0f}s with {done}/{self.n} jobs done"
        if how == "single":
            note += "; pre-enqueued one by one"
        return {
            "metrics": {"jobs_per_s": throughput(records), "rss_mb": worker.peak_rss / 1e6},
            "note": note,
        }

    async def warm_worker(self, jobs: int = 10) -> None:
        """Start the worker and wait until it has run ``jobs`` jobs (so it is ready)."""
        for _ in range(jobs):
            await maybe(self.adapter.enqueue("noop", 0.0))
        done = await self.wait_for_records(jobs, 60.0)
        if done < jobs:
            assert self.worker is not None
            raise RuntimeError(f"the worker ran {done}/{jobs} warm-up jobs in 60s")

    async def w_latency(self) -> Result:
        self.start_worker("high")
        warm = 10
        await self.warm_worker(warm)
        rate = float(self.spec["rate"])
        enqueue = self.adapter.enqueue
        start = time.perf_counter()
        for i in range(self.n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            result = enqueue("noop", time.time())
            if inspect.isawaitable(result):
                await result
        sent = time.perf_counter() - start
        await self.wait_for_records(warm + self.n, 30.0)
        samples = [(s - e) * 1000 for e, s in read_records(self.records) if e > 0]
        metrics = latency_summary(samples)
        metrics["offered_rate"] = self.n / sent
        note = f"{rate:.0f} jobs/s offered"
        if len(samples) < self.n:
            note += f"; {self.n - len(samples)} of {self.n} jobs had not started after 30s"
        return {"metrics": metrics, "note": note}

    async def w_e2e(self) -> Result:
        if not self.adapter.results:
            raise Unsupported(self.adapter.result_note or "no API to await a job's result")
        self.start_worker("high")
        for i in range(min(5, self.n)):
            await maybe(self.adapter.roundtrip(f"warm{i}"))
        samples: list[float] = []
        stop = time.perf_counter() + self.cap
        for i in range(self.n):
            x = f"x{i}"
            start = time.perf_counter()
            value = await maybe(self.adapter.roundtrip(x))
            samples.append((time.perf_counter() - start) * 1000)
            if value is not None and value != x:
                raise RuntimeError(f"round trip returned {value!r}, expected {x!r}")
            if start > stop:
                break
        cap = self.capped(len(samples), self.n, "round trips")
        note = "; ".join(n for n in (self.adapter.result_note, cap) if n)
        return {"metrics": latency_summary(samples), "note": note}

    async def w_memory(self) -> Result:
        size = int(self.spec["payload"])
        rng = random.Random(7)
        data = "".join(rng.choices(string.ascii_letters + string.digits, k=size))
        before = self.store.footprint()
        how = await prefill(self.adapter, "blob", [data] * self.n)
        await self.close_adapter()
        after = self.store.footprint()
        way = "in batches" if how == "bulk" else "one by one"
        return {
            "metrics": {"bytes_per_job": (after - before) / self.n},
            "note": f"{size} B string argument; enqueued {way}",
        }


async def run_spec(spec: dict[str, Any]) -> Result:
    cell = Cell(spec)
    return await cell.run()


def main(argv: list[str]) -> int:
    spec = json.loads(argv[1])
    started = time.time()
    try:
        result = asyncio.run(run_spec(spec))
    except Unsupported as exc:
        result = {"reason": str(exc)}
    except Exception as exc:  # noqa: BLE001 - any failure becomes a marked cell
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    result["seconds"] = time.time() - started
    sys.stdout.write("BENCH-RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()
    sys.stderr.flush()
    # Some libraries leave non-daemon threads or tasks behind; the cell is over either way.
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
