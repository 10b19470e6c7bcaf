"""Redis Cluster rows of ``make bench``: Conveyor with 1, 2 and 3 shards on this machine.

For each shard count a private cluster (``N`` masters, no replicas, ``redis-server`` on
loopback ports; ``tests/reliability/servers.py``) is started. Jobs are spread over
``QUEUES`` queues (one no-op task per queue, ``bench/apps/cluster_app.py``), so over the
shards: the row measures enqueue throughput (batches of 50 per queue, queues concurrently) and
worker throughput (``n`` jobs pre-enqueued, then ``conveyor worker -Q q0,… -p 2 -c 50``;
jobs/s between the first and the last start), and shows how the keys spread (keys and
distinct slots per master, from ``DBSIZE`` and ``CLUSTER KEYSLOT``).

On a two-core machine the shards, the workers and the producer share the same cores, so more
shards cannot add throughput here; the point is that it works and spreads by shard count.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import uuid4

from bench.common import WorkerProcess, WorkerSpec, clear_records, count_records, read_records
from bench.common import throughput as rate

if TYPE_CHECKING:
    from bench.harness import Harness

QUEUES = 6
SHARDS = (1, 2, 3)


async def _enqueue(url: str, ns: str, n: int) -> tuple[float, dict[str, Any]]:
    """Enqueue ``n`` jobs over the queues; (jobs/s, key spread)."""
    from bench.apps import cluster_app

    app, by_queue = cluster_app.build(url, ns, QUEUES)
    tasks = list(by_queue.values())
    per_queue = max(n // len(tasks), 1)
    try:
        backend = await app.backend()
        t0 = time.perf_counter()

        async def fill(task: Any) -> None:
            for start in range(0, per_queue, 50):
                await app.enqueue_many([task.call(0.0) for _ in range(min(50, per_queue - start))])

        await asyncio.gather(*(fill(t) for t in tasks))
        elapsed = time.perf_counter() - t0
        client = backend.client  # type: ignore[attr-defined]
        slots = await backend.key_slots(list(by_queue))  # type: ignore[attr-defined]
        spread: dict[str, Any] = {}
        for node in client.get_primaries():
            size = await client.execute_command("DBSIZE", target_nodes=node)
            spread[f"{node.host}:{node.port}"] = {"keys": int(size), "queues": []}
        for queue, slot in slots.items():
            node = client.nodes_manager.get_node_from_slot(slot)
            spread[f"{node.host}:{node.port}"]["queues"].append(queue)
        return per_queue * len(tasks) / elapsed, spread
    finally:
        await app.close()


def _process(url: str, ns: str, records: str, n: int, deadline: float) -> float:
    env = {
        **os.environ,
        "BENCH_URL": url,
        "BENCH_NS": ns,
        "BENCH_QUEUES": str(QUEUES),
        "BENCH_RECORD_DIR": records,
    }
    queues = ",".join(f"q{i}" for i in range(QUEUES))
    argv = [sys.executable, "-m", "conveyor", "worker", "bench.apps.cluster_app:from_env", "-Q",
            queues, "-p", "2", "-c", "50", "--log-level", "critical", "--no-scheduler"]  # fmt: skip
    worker = WorkerProcess(WorkerSpec(argv, "conveyor worker -p 2 -c 50"), env, records + ".log")
    try:
        end = time.monotonic() + deadline
        while count_records(records) < n and time.monotonic() < end and worker.alive():
            time.sleep(0.05)  # a poll of the record files; the deadline bounds it
        return rate(read_records(records))
    finally:
        worker.stop()


def measure(harness: Harness) -> dict[str, Any]:
    """jobs/s (enqueue and process) per shard count, interleaved over iterations."""
    if "redis" not in harness.args.backends.split(","):
        return {}
    from tests.support.servers import RedisCluster

    smoke = harness.args.smoke
    shards = (1,) if smoke else SHARDS
    iterations = 1 if smoke else harness.sizes.iterations
    n = harness.sizes.process_high
    out: dict[str, Any] = {"queues": QUEUES, "jobs": n}
    cells: dict[int, dict[str, list[float]]] = {s: {"enqueue": [], "process": []} for s in shards}
    root = Path(tempfile.mkdtemp(prefix="conveyor-bench-cluster-"))
    try:
        clusters = {}
        for s in shards:
            try:
                clusters[s] = RedisCluster(root / f"s{s}", s, 0).start()
            except (FileNotFoundError, OSError, RuntimeError, TimeoutError) as exc:
                return {"reason": f"no Redis Cluster: {exc}"}
        for i in range(iterations):
            order = list(shards) if i % 2 == 0 else list(reversed(shards))
            for s in order:
                ns = f"bc{uuid4().hex[:8]}"
                records = str(root / f"rec-{s}-{i}")
                os.makedirs(records, exist_ok=True)
                clear_records(records)
                url = clusters[s].url
                per_s, spread = asyncio.run(_enqueue(url, ns, n))
                cells[s]["enqueue"].append(per_s)
                cells[s]["process"].append(
                    _process(
                        url, ns, records, n - n % QUEUES, float(harness.sizes.process_deadline)
                    )
                )
                out.setdefault("spread", {})[str(s)] = spread
                harness.console.print(
                    f"cluster  {s} shard(s)  #{i + 1}  enqueue {per_s:,.0f} jobs/s, "
                    f"process {cells[s]['process'][-1]:,.0f} jobs/s"
                )
    finally:
        for cluster in locals().get("clusters", {}).values():
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    out["shards"] = {
        str(s): {k: {"values": v, "median": statistics.median(v)} for k, v in cells[s].items() if v}
        for s in shards
    }
    return out


def markdown(data: dict[str, Any]) -> list[str]:
    """The Redis Cluster rows of the scale-out section."""
    from bench.report import md_table

    if not data:
        return []
    if data.get("reason"):
        return [f"**Redis Cluster**: not measured ({data['reason']}).", ""]
    body = []
    for s, row in data.get("shards", {}).items():
        spread = data.get("spread", {}).get(s, {})
        keys = ", ".join(
            f"{v['keys']:,} keys ({len(v['queues'])} queue{'s' if len(v['queues']) != 1 else ''})"
            for v in spread.values()
        )
        body.append([
            f"{s} shard{'s' if s != '1' else ''}",
            f"{row['enqueue']['median']:,.0f}" if "enqueue" in row else "–",
            f"{row['process']['median']:,.0f}" if "process" in row else "–",
            keys or "–",
        ])  # fmt: skip
    return [
        f"**Redis Cluster** ({data['queues']} queues, {data['jobs']:,} jobs; worker "
        "`-p 2 -c 50`; jobs/s, median; keys per master after the enqueue)",
        "",
        md_table(["cluster", "enqueue (batches of 50)", "process", "keys per master"], body),
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.cluster [harness options]``: only the Redis Cluster rows; prints them
    and writes ``bench/results/cluster.json``."""
    import json

    from bench.harness import RESULTS, Harness, parse

    harness = Harness(parse(sys.argv[1:] if argv is None else argv))
    data = measure(harness)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cluster.json").write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print("\n".join(markdown(data)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
