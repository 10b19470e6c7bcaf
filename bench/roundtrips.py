"""Count what Conveyor's worker asks of its backend per job (a diagnostic for the report).

Runs Conveyor's :class:`~conveyor.Worker` in-process (``concurrency`` 1 or 100) over ``n``
pre-enqueued no-op jobs, with every backend method wrapped in a counter, and reports backend
calls per job by method, the sizes of the claims, and (SQLite) how many write transactions the
writer thread committed. Each backend call is one round trip to the store (one EVALSHA, one
statement or pipeline, one writer-thread transaction or a share of one).

``python -m bench.roundtrips '<json spec>'``, normally called by :mod:`bench.profile`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from bench import recorder
from bench.common import clear_records, count_records

METHODS = (
    "claim",
    "complete_and_claim",
    "complete",
    "fail",
    "release",
    "heartbeat",
    "wait_for_jobs",
    "register_worker",
    "recover_expired",
    "count_jobs",
    "append_logs",
    "set_progress",
    "get_job",
)


async def count_calls(n: int, concurrency: int, records: str) -> dict[str, Any]:
    from bench.apps import conveyor_app
    from conveyor import Worker, WorkerConfig

    app = conveyor_app.app
    await app.migrate()
    for start in range(0, n, 500):
        batch = min(500, n - start)
        await app.enqueue_many([conveyor_app.noop.call(0.0) for _ in range(batch)])
    backend = await app.backend()
    calls: Counter[str] = Counter()
    claim_sizes: Counter[int] = Counter()

    def wrap(name: str, method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def counted(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            result = await method(*args, **kwargs)
            if name == "claim":
                claim_sizes[len(result)] += 1
            return result

        return counted

    for name in METHODS:
        method = getattr(backend, name, None)
        if method is not None:
            setattr(backend, name, wrap(name, method))
    transactions = _count_sqlite_transactions(app)
    clear_records(records)
    recorder.reset()
    worker = Worker(app, WorkerConfig(concurrency=concurrency))
    started = time.perf_counter()
    run = asyncio.create_task(worker.run())
    while count_records(records) < n and not run.done():
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    worker.stop()
    await asyncio.wait_for(run, 30)
    await app.close()
    jobs = count_records(records)
    out: dict[str, Any] = {
        "jobs": jobs,
        "concurrency": concurrency,
        "jobs_per_s_in_process": jobs / elapsed,
        "calls_per_job": {k: v / jobs for k, v in calls.most_common()},
        "backend_calls_per_job": sum(calls.values()) / jobs,
        "claim_sizes": {str(k): v for k, v in sorted(claim_sizes.items())},
        "mean_claim_size": (
            sum(k * v for k, v in claim_sizes.items()) / max(sum(claim_sizes.values()), 1)
        ),
    }
    if transactions is not None:
        out["sqlite_write_transactions_per_job"] = transactions["count"] / jobs
    return out


def _count_sqlite_transactions(app: Any) -> dict[str, int] | None:
    """Wrap the SQLite engine's batch runner, when there is one, to count its commits."""
    engine = getattr(app.factory, "_engine", None)
    run_batch = getattr(engine, "_run_batch", None)
    if engine is None or run_batch is None:
        return None
    counter = {"count": 0}

    def counted(*args: Any, **kwargs: Any) -> Any:
        counter["count"] += 1
        return run_batch(*args, **kwargs)

    engine._run_batch = counted
    return counter


def main(argv: list[str]) -> int:
    from bench.stores import store_for

    spec = json.loads(argv[1])
    store = store_for(spec)
    records = os.path.join(spec["cell_dir"], "records")
    os.makedirs(records, exist_ok=True)
    os.environ.update(store.env(), BENCH_RECORD_DIR=records)
    result: dict[str, Any] = {}
    try:
        for concurrency in (1, 100):
            store.prepare()
            try:
                n = int(spec["n"]) if concurrency == 100 else max(int(spec["n"]) // 5, 20)
                result[f"c{concurrency}"] = asyncio.run(count_calls(n, concurrency, records))
            finally:
                store.cleanup()
    except Exception as exc:  # noqa: BLE001 - reported in the results
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write("BENCH-RESULT " + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
