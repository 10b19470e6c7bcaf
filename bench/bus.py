"""The event bus next to the store's own floor, measured in the same run (issue 16).

Rows, per backend: publish rate one event per call and in batches of 50 (one subscription),
the bulk rate with a fan-out to 10 subscriptions (each event stored with 10 delivery jobs), and
publish→handler-start latency (p50/p99) at a fixed rate of events handled by a worker process.
Floors, measured here too with plain client calls and no Conveyor code: Redis streams
(``XADD`` one at a time and pipelined by 50, ``XREADGROUP``+``XACK``, ``XADD``→``XREADGROUP``
latency at the same rate), PostgreSQL (an insert plus ``pg_notify`` per transaction, as one
statement, 50 per transaction, ``LISTEN`` latency at the same rate), SQLite (an insert per
transaction and 50 per transaction). Targets (issue 16): bulk publish ≥ 50 % of the bulk
floor; p99 publish→handler below 5 ms on Redis and SQLite, below 10 ms on PostgreSQL.

``python -m bench.bus '<json spec>'`` prints ``BENCH-RESULT {...}``;
``python -m bench.bus worker '<json spec>'`` is the worker process of the latency row.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from conveyor import Conveyor
from conveyor.bus import Event

Entry = dict[str, Any]
P99_TARGET_MS = {"redis": 5.0, "sqlite": 5.0, "postgres": 10.0}


def entry(name: str, value: float | None, unit: str, note: str = "") -> Entry:
    return {"name": name, "value": value, "unit": unit, "note": note}


def sizes(spec: dict[str, Any]) -> dict[str, Any]:
    smoke = bool(spec.get("smoke"))
    return {
        "single": 40 if smoke else 2000,
        "bulk": 200 if smoke else 10000,
        "fanout": 100 if smoke else 3000,
        "latency": 30 if smoke else 3000,
        "rate": 500.0,
    }


def app_for(spec: dict[str, Any], ns: str) -> Conveyor:
    backend = spec["backend"]
    if backend == "redis":
        return Conveyor(spec["redis_url"], backend_options={"prefix": ns})
    if backend == "postgres":
        return Conveyor(spec["pg_url"], backend_options={"schema": ns})
    return Conveyor(f"sqlite:///{spec['sqlite_dir']}/{ns}.db")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


# -- Conveyor --------------------------------------------------------------------------------------
async def _publish_rates(spec: dict[str, Any]) -> list[Entry]:
    n = sizes(spec)
    out: list[Entry] = []
    for subs in (1, 10):
        ns = f"{spec['ns']}_f{subs}"
        app = app_for(spec, ns)
        await app.migrate()
        for i in range(subs):

            async def handler(event: Event[Any]) -> None: ...

            app.bus.subscribe("bench.#", name=f"sub{i}")(handler)
        await app.bus.sync()
        payload = {"order_id": 1, "total": 9.5, "region": "eu"}
        if subs == 1:
            t0 = time.perf_counter()
            for i in range(n["single"]):
                await app.bus.publish("bench.single", payload, key=f"k{i % 64}")
            rate = n["single"] / (time.perf_counter() - t0)
            out.append(entry("publish, single (1 subscription)", rate, "events/s"))
        count = n["bulk"] if subs == 1 else n["fanout"]
        batch = [Event("bench.bulk", payload, key=f"k{i % 64}") for i in range(50)]
        t0 = time.perf_counter()
        for _ in range(count // 50):
            await app.bus.publish_many(batch)
        rate = (count // 50) * 50 / (time.perf_counter() - t0)
        label = "publish, bulk 50" + (" (1 subscription)" if subs == 1 else ", fan-out 10")
        note = "" if subs == 1 else f"{rate * subs:.0f} deliveries/s"
        out.append(entry(label, rate, "events/s", note))
        await app.close()
        await app.factory.destroy()
    return out


def worker_main(spec: dict[str, Any]) -> None:
    """The latency row's worker process: the subscription appends each handler start's delay
    (now minus the publish time carried in the payload) to ``spec['file']``."""
    from conveyor.worker.worker import Worker, WorkerConfig

    app = app_for(spec, spec["ns"] + "_lat")
    out = open(spec["file"], "a", buffering=1)  # noqa: SIM115 - closed at exit

    @app.bus.subscribe("bench.latency", name="latency", ordered=False)
    async def latency(event: Event[Any]) -> None:
        out.write(f"{(time.time() - event.data['t']) * 1000:.4f}\n")

    worker = Worker(app, WorkerConfig(concurrency=10, poll_interval=0.5, scheduler=False))
    loop = asyncio.new_event_loop()
    loop.add_signal_handler(signal.SIGTERM, worker.stop)
    try:
        loop.run_until_complete(worker.run())
    finally:
        loop.run_until_complete(app.close())
        loop.close()
        out.close()


async def _latency(spec: dict[str, Any]) -> list[Entry]:
    n = sizes(spec)
    app = app_for(spec, spec["ns"] + "_lat")
    await app.migrate()

    @app.bus.subscribe("bench.latency", name="latency", ordered=False)
    async def latency(event: Event[Any]) -> None: ...

    await app.bus.sync()
    path = Path(spec["cell_dir"]) / "latency.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    worker = subprocess.Popen(  # noqa: ASYNC220 - started once, not awaited
        [sys.executable, "-m", "bench.bus", "worker", json.dumps({**spec, "file": str(path)})],
        env={**os.environ},
    )
    try:
        await app.bus.publish("bench.latency", {"t": time.time()})  # warm up
        deadline = time.monotonic() + 60
        while path.read_text().count("\n") < 1:
            if time.monotonic() > deadline or worker.poll() is not None:
                raise RuntimeError("the latency worker did not start")
            await asyncio.sleep(0.05)
        path.write_text("")
        interval = 1.0 / n["rate"]
        start = time.perf_counter()
        for i in range(n["latency"]):
            wait = start + i * interval - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            await app.bus.publish("bench.latency", {"t": time.time()})
        deadline = time.monotonic() + 60
        while path.read_text().count("\n") < n["latency"] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        values = [float(x) for x in path.read_text().split()]
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
    await app.close()
    await app.factory.destroy()
    note = f"{len(values)} events at {n['rate']:.0f}/s, worker concurrency 10"
    return [
        entry("publish→handler start, p50", percentile(values, 0.5), "ms", note),
        entry("publish→handler start, p99", percentile(values, 0.99), "ms", note),
    ]


# -- floors ----------------------------------------------------------------------------------------
async def _redis_floor(spec: dict[str, Any]) -> list[Entry]:
    from redis.asyncio import Redis

    n = sizes(spec)
    client = Redis.from_url(spec["redis_url"])
    key = f"{{{spec['ns']}}}:floor"
    fields = {"n": "bench.bulk", "p": json.dumps({"order_id": 1, "total": 9.5})}
    out: list[Entry] = []
    try:
        t0 = time.perf_counter()
        for _ in range(n["single"]):
            await client.xadd(key, fields)
        out.append(entry("XADD, one at a time", n["single"] / (time.perf_counter() - t0), "ops/s"))
        t0 = time.perf_counter()
        for _ in range(n["bulk"] // 50):
            async with client.pipeline(transaction=False) as pipe:
                for _ in range(50):
                    pipe.xadd(key, fields)
                await pipe.execute()
        rate = (n["bulk"] // 50) * 50 / (time.perf_counter() - t0)
        out.append(entry("XADD, pipelines of 50", rate, "ops/s"))
        await client.xgroup_create(key, "g", id="0")
        total, t0 = 0, time.perf_counter()
        while True:
            got = await client.xreadgroup("g", "c", {key: ">"}, count=100)
            if not got or not got[0][1]:
                break
            ids = [i for i, _ in got[0][1]]
            await client.xack(key, "g", *ids)
            total += len(ids)
        out.append(
            entry("XREADGROUP + XACK", total / (time.perf_counter() - t0), "ops/s", "100 per read")
        )
        out += await _redis_latency(spec, client, key + ":lat")
    finally:
        await client.delete(key, key + ":lat")
        await client.aclose()
    return out


async def _redis_latency(spec: dict[str, Any], client: Any, key: str) -> list[Entry]:
    from redis.asyncio import Redis

    n = sizes(spec)
    reader = Redis.from_url(spec["redis_url"])
    await client.xgroup_create(key, "g", id="$", mkstream=True)
    delays: list[float] = []

    async def consume() -> None:
        while len(delays) < n["latency"]:
            got = await reader.xreadgroup("g", "c", {key: ">"}, count=100, block=1000)
            now = time.time()
            for _, entries in got or []:
                for entry_id, f in entries:
                    delays.append((now - float(f[b"t"])) * 1000)
                    await reader.xack(key, "g", entry_id)

    task = asyncio.create_task(consume())
    interval, start = 1.0 / n["rate"], time.perf_counter()
    for i in range(n["latency"]):
        wait = start + i * interval - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        await client.xadd(key, {"t": repr(time.time())})
    await asyncio.wait_for(task, 60)
    await reader.aclose()
    note = f"XADD→XREADGROUP BLOCK, {n['rate']:.0f}/s, same process"
    return [
        entry("publish→consume, p50", percentile(delays, 0.5), "ms", note),
        entry("publish→consume, p99", percentile(delays, 0.99), "ms", note),
    ]


async def _postgres_floor(spec: dict[str, Any]) -> list[Entry]:
    import psycopg

    n = sizes(spec)
    table = f'"bus_floor_{spec["ns"]}"'
    payload = json.dumps({"order_id": 1, "total": 9.5})
    out: list[Entry] = []
    conn = await psycopg.AsyncConnection.connect(spec["pg_url"], autocommit=True)
    try:
        await conn.execute(
            f"CREATE TABLE {table} (position bigserial PRIMARY KEY, name text, payload bytea)"
        )
        insert = f"INSERT INTO {table} (name, payload) VALUES (%s, %s)"
        t0 = time.perf_counter()
        for _ in range(n["single"]):
            async with conn.transaction():
                await conn.execute(insert, ("bench.single", payload.encode()))
                await conn.execute("SELECT pg_notify('bus_floor', 'x')")
        rate = n["single"] / (time.perf_counter() - t0)
        out.append(entry("insert + pg_notify, one per transaction", rate, "events/s"))
        one = (
            f"WITH i AS (INSERT INTO {table} (name, payload) VALUES (%s, %s) RETURNING 1) "
            "SELECT pg_notify('bus_floor', 'x') FROM i"
        )
        t0 = time.perf_counter()
        for _ in range(n["single"]):
            await conn.execute(one, ("bench.single", payload.encode()))
        rate = n["single"] / (time.perf_counter() - t0)
        out.append(entry("insert + pg_notify as one statement", rate, "events/s"))
        many = (
            f"WITH i AS (INSERT INTO {table} (name, payload) SELECT 'bench.bulk', p "
            "FROM unnest(%s::bytea[]) AS p RETURNING 1) SELECT pg_notify('bus_floor', 'x')"
        )
        rows = [payload.encode()] * 50
        t0 = time.perf_counter()
        for _ in range(n["bulk"] // 50):
            await conn.execute(many, (rows,))
        rate = (n["bulk"] // 50) * 50 / (time.perf_counter() - t0)
        out.append(entry("insert 50 + pg_notify per transaction", rate, "events/s"))
        out += await _postgres_latency(spec, conn, table)
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.close()
    return out


async def _postgres_latency(spec: dict[str, Any], conn: Any, table: str) -> list[Entry]:
    import psycopg

    n = sizes(spec)
    channel = f"bus_floor_{spec['ns']}"
    listener = await psycopg.AsyncConnection.connect(spec["pg_url"], autocommit=True)
    await listener.execute(f'LISTEN "{channel}"')
    delays: list[float] = []

    async def listen() -> None:
        async for note in listener.notifies():
            delays.append((time.time() - float(note.payload)) * 1000)
            if len(delays) >= n["latency"]:
                return

    task = asyncio.create_task(listen())
    interval, start = 1.0 / n["rate"], time.perf_counter()
    for i in range(n["latency"]):
        wait = start + i * interval - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        await conn.execute(
            f"WITH i AS (INSERT INTO {table} (name, payload) VALUES ('bench.latency', '') "
            "RETURNING 1) SELECT pg_notify(%s, %s) FROM i",
            (channel, repr(time.time())),
        )
    await asyncio.wait_for(task, 60)
    await listener.close()
    note = f"insert + NOTIFY committed → LISTEN, {n['rate']:.0f}/s, same process"
    return [
        entry("publish→consume, p50", percentile(delays, 0.5), "ms", note),
        entry("publish→consume, p99", percentile(delays, 0.99), "ms", note),
    ]


def _sqlite_floor(spec: dict[str, Any]) -> list[Entry]:
    n = sizes(spec)
    path = os.path.join(spec["sqlite_dir"], f"{spec['ns']}_floor.db")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE ev (position INTEGER PRIMARY KEY, name TEXT, payload BLOB)")
    payload = json.dumps({"order_id": 1, "total": 9.5}).encode()
    out: list[Entry] = []
    t0 = time.perf_counter()
    for _ in range(n["single"]):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO ev (name, payload) VALUES ('bench.single', ?)", (payload,))
        conn.execute("COMMIT")
    rate = n["single"] / (time.perf_counter() - t0)
    out.append(entry("insert, one per transaction", rate, "events/s", "WAL, synchronous=NORMAL"))
    t0 = time.perf_counter()
    for _ in range(n["bulk"] // 50):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO ev (name, payload) VALUES ('bench.bulk', ?)", [(payload,)] * 50
        )
        conn.execute("COMMIT")
    rate = (n["bulk"] // 50) * 50 / (time.perf_counter() - t0)
    out.append(entry("insert, 50 per transaction", rate, "events/s", "WAL, synchronous=NORMAL"))
    conn.close()
    for suffix in ("", "-wal", "-shm"):
        try:
            os.remove(path + suffix)
        except FileNotFoundError:
            pass
    return out


# -- the run ---------------------------------------------------------------------------------------
BULK_FLOOR = {
    "redis": "XADD, pipelines of 50",
    "postgres": "insert 50 + pg_notify per transaction",
    "sqlite": "insert, 50 per transaction",
}


def targets(backend: str, rows: list[Entry], floors: list[Entry]) -> list[Entry]:
    by_row = {e["name"]: e["value"] for e in rows}
    by_floor = {e["name"]: e["value"] for e in floors}
    out = []
    bulk, floor = by_row.get("publish, bulk 50 (1 subscription)"), by_floor.get(BULK_FLOOR[backend])
    # The issue sets the bulk target against the Redis and PostgreSQL floors; SQLite's floor, a
    # bare insert into an unindexed table from C, is shown for scale only.
    if bulk and floor and backend != "sqlite":
        share = 100.0 * bulk / floor
        out.append(
            {
                "name": f"bulk publish vs {BULK_FLOOR[backend]}",
                "value": share,
                "unit": "% of floor",
                "target": ">= 50 %",
                "met": share >= 50.0,
            }
        )
    p99 = by_row.get("publish→handler start, p99")
    if p99 is not None:
        out.append(
            {
                "name": "p99 publish→handler start",
                "value": p99,
                "unit": "ms",
                "target": f"< {P99_TARGET_MS[backend]:g} ms",
                "met": p99 < P99_TARGET_MS[backend],
            }
        )
    return out


async def measure(spec: dict[str, Any]) -> dict[str, Any]:
    backend = spec["backend"]
    rows = await _publish_rates(spec)
    rows += await _latency(spec)
    if backend == "redis":
        floors = await _redis_floor(spec)
    elif backend == "postgres":
        floors = await _postgres_floor(spec)
    else:
        floors = _sqlite_floor(spec)
    return {"rows": rows, "floors": floors, "targets": targets(backend, rows, floors)}


def main(argv: list[str]) -> int:
    if argv and argv[0] == "worker":
        worker_main(json.loads(argv[1]))
        return 0
    spec = json.loads(argv[0])
    try:
        result = asyncio.run(measure(spec))
    except Exception:  # noqa: BLE001 - reported as the row's error
        result = {"error": traceback.format_exc()[-1500:]}
    print("BENCH-RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
