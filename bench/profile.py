"""Where Conveyor's worker spends its CPU: py-spy on a real ``conveyor worker -c 100``.

``python -m bench.profile '<json spec>'`` pre-enqueues the process-high workload, starts the
worker exactly as the benchmark does, attaches ``py-spy record --nonblocking`` to it until
the jobs are done, and summarises the samples three ways:

* ``by_area``: the innermost frame's package (worker, core, backend layer, driver, asyncio, …);
* ``by_conveyor_function``: each sample charged to the innermost Conveyor function on its
  stack, i.e. the Conveyor code responsible for the time, including what it calls;
* ``top_self``: the hottest functions by self time.

The raw collapsed stacks stay in ``bench/results/profile-<backend>.txt``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import (
    WorkerProcess,
    clear_records,
    count_records,
    read_records,
    throughput,
)

BENCH = Path(__file__).resolve().parent
AREAS = (
    ("bench/recorder", "the job itself (record)"),
    ("conveyor/cli/", ""),  # entry frames: look further up the stack
    ("conveyor/__main__", ""),
    ("conveyor/worker/", "Conveyor worker (claim loop, runner)"),
    ("conveyor/core/", "Conveyor core (context, serialization, events)"),
    ("conveyor/backends/", "Conveyor backend layer"),
    ("conveyor/domain/", "Conveyor domain"),
    ("conveyor/", "Conveyor, other"),
    ("redis/", "redis-py driver"),
    ("hiredis", "redis-py driver"),
    ("psycopg", "psycopg driver"),
    ("psycopg_pool", "psycopg driver"),
    ("sqlite3", "sqlite3 module"),
    ("asyncio/", "asyncio event loop"),
    ("selectors.py", "asyncio event loop"),
    ("threading.py", "threads"),
    ("concurrent/", "threads"),
    ("queue.py", "threads"),
    ("logging/", "logging"),
    ("json/", "json"),
)


def py_spy() -> str:
    found = shutil.which("py-spy") or str(BENCH / ".venv-peers" / "bin" / "py-spy")
    if not os.path.exists(found):
        raise RuntimeError("py-spy is not installed (bash bench/run.sh installs it)")
    return found


def area(frames: list[str]) -> str:
    """The area of the innermost frame that belongs to one (stdlib helpers such as
    ``inspect`` count for the code that called them)."""
    for frame in reversed(frames):
        for needle, name in AREAS:
            if needle in frame:
                if name:
                    return name
                break
    return "other"


def short(frame: str) -> str:
    """``function (conveyor/worker/runner.py:123)`` → ``worker/runner.py:function``."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    path = path.removeprefix("conveyor/").split("/src/conveyor/")[-1]
    return f"{path}:{name}"


def _conveyor_code(frame: str) -> bool:
    return "conveyor/" in frame and "conveyor/cli/" not in frame and "__main__" not in frame


def summarise(raw: str) -> dict[str, Any]:
    areas: Counter[str] = Counter()
    owners: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if "(" in f]
        if not frames:
            continue
        total += count
        leaf = frames[-1]
        areas[area(frames)] += count
        leaves[short(leaf)] += count
        owner = next((f for f in reversed(frames) if _conveyor_code(f)), None)
        owners[
            short(owner) if owner else "(no Conveyor frame: event loop, driver I/O, the benchmark)"
        ] += count
    if not total:
        return {"samples": 0}

    def pct(counter: Counter[str], limit: int) -> list[tuple[str, float]]:
        return [(name, 100.0 * n / total) for name, n in counter.most_common(limit)]

    return {
        "samples": total,
        "by_area": pct(areas, 12),
        "by_conveyor_function": pct(owners, 15),
        "top_self": pct(leaves, 15),
    }


async def prefill(count: int) -> None:
    from bench.apps import conveyor_app

    await conveyor_app.app.migrate()
    for start in range(0, count, 500):
        batch = min(500, count - start)
        await conveyor_app.app.enqueue_many([conveyor_app.noop.call(0.0) for _ in range(batch)])
    await conveyor_app.app.close()


def profile(spec: dict[str, Any]) -> dict[str, Any]:
    from bench.adapters.conveyor_adapter import Adapter
    from bench.stores import store_for

    store = store_for(spec)
    records = os.path.join(spec["cell_dir"], "records")
    os.makedirs(records, exist_ok=True)
    os.environ.update(store.env(), BENCH_RECORD_DIR=records)
    clear_records(records)
    store.prepare()
    out = BENCH / "results" / f"profile-{spec['backend']}.txt"
    n = int(spec["n"])
    try:
        asyncio.run(prefill(n))
        worker_spec = Adapter(spec, store).worker("high")
        worker = WorkerProcess(
            worker_spec, dict(os.environ), os.path.join(spec["cell_dir"], "w.log")
        )
        argv = [py_spy(), "record", "--pid", str(worker.pid), "--rate", "200", "--format", "raw"]
        argv += ["--nonblocking", "--output", str(out)]
        spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while count_records(records) < n and time.monotonic() < deadline and worker.alive():
            time.sleep(0.05)
        spy.send_signal(signal.SIGINT)
        _, err = spy.communicate(timeout=60)
        worker.stop()
        if not out.exists():
            raise RuntimeError(f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}")
        result = summarise(out.read_text())
        result["jobs_per_s"] = throughput(read_records(records))
        result["what"] = f"conveyor worker -c 100, {n} no-op jobs pre-enqueued, py-spy at 200 Hz"
        result["raw_file"] = str(out.relative_to(BENCH.parent))
        return result
    finally:
        store.cleanup()


def profile_enqueue(spec: dict[str, Any]) -> dict[str, Any]:
    """py-spy over a Conveyor ``enqueue_single`` cell (the producer side)."""
    out = BENCH / "results" / f"profile-enqueue-{spec['backend']}.txt"
    n = 500 if spec.get("smoke") else 5000
    cell = {**spec, "lib": "conveyor", "workload": "enqueue_single", "n": n}
    cell["ns"] = spec["ns"] + "_enq"
    cell["cell_dir"] = os.path.join(spec["cell_dir"], "enqueue")
    argv = [py_spy(), "record", "--rate", "200", "--format", "raw", "--output", str(out), "--"]
    argv += [sys.executable, "-m", "bench.cell", json.dumps(cell)]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    if not out.exists():
        raise RuntimeError(f"py-spy wrote nothing: {run.stderr[-500:]}")
    result = summarise(out.read_text())
    result["what"] = f"one process enqueuing {n} jobs one by one (task.enqueue), py-spy at 200 Hz"
    result["raw_file"] = str(out.relative_to(BENCH.parent))
    return result


def main(argv: list[str]) -> int:
    spec = json.loads(argv[1])
    try:
        result = profile(spec)
        result["enqueue"] = profile_enqueue(spec)
    except Exception as exc:  # noqa: BLE001 - reported in the results
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write("BENCH-RESULT " + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
