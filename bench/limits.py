"""The store's own rate (limit (a) of issue 7), measured with the stores' C tools.

* Redis: ``redis-benchmark`` for the commands a queue uses (50 clients, one client, and
  pipelined), and ``EVALSHA`` of Conveyor's own claim script on real queued jobs.
* PostgreSQL: ``pgbench`` running the SKIP LOCKED claim and the fenced completion on
  Conveyor's own schema (one job per claim; and 50 per claim, completed in one statement).
* SQLite: the ``sqlite3`` shell running a script of the same ``UPDATE … RETURNING`` claim and
  completion in WAL mode (one job per transaction; and 50 per transaction).

``python -m bench.limits '<json spec>'`` prints ``BENCH-RESULT {"entries": [...]}``. These
figures are context: what the store itself can do on this machine, with no Python in the loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any

Entry = dict[str, Any]
QUEUE = "default"


def entry(name: str, value: float | None, unit: str, note: str = "") -> Entry:
    return {"name": name, "value": value, "unit": unit, "note": note}


# -- Redis ------------------------------------------------------------------------------------
def _redis_benchmark(args: list[str], url: str) -> dict[str, float]:
    host_port, db = url.split("//", 1)[1].rsplit("/", 1)
    host, port = host_port.rsplit(":", 1)
    argv = ["redis-benchmark", "-h", host, "-p", port, "--dbnum", db, "--csv", *args]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=True)
    rates = {}
    for line in out.stdout.splitlines():
        cells = [c.strip('"') for c in line.split(",")]
        if len(cells) >= 2 and cells[0] != "test":
            try:
                rates[cells[0]] = float(cells[1])
            except ValueError:
                continue
    return rates


async def _prefill_redis(url: str, prefix: str, count: int) -> None:
    from bench.apps import conveyor_app

    app = conveyor_app.app
    noop = conveyor_app.noop
    for start in range(0, count, 1000):
        await app.enqueue_many([noop.call(0.0) for _ in range(min(1000, count - start))])
    await app.close()


def redis_limits(spec: dict[str, Any]) -> list[Entry]:
    import redis

    from conveyor.backends.redis.codec import key_base
    from conveyor.backends.redis.scripts import script

    url, smoke = spec["redis_url"], spec["smoke"]
    n = 5000 if smoke else 200_000
    out: list[Entry] = []
    tests = "lpush,rpop,zadd,zpopmin,hset"
    for label, extra in (("50 clients", ["-c", "50"]), ("1 client", ["-c", "1"])):
        count = n if label == "50 clients" else n // 4
        for test, rate in _redis_benchmark(["-n", str(count), "-t", tests, *extra], url).items():
            out.append(entry(f"{test} ({label})", rate, "ops/s", "redis-benchmark"))
    piped = _redis_benchmark(["-n", str(n * 4), "-t", "lpush,rpop", "-c", "50", "-P", "16"], url)
    for test, rate in piped.items():
        out.append(
            entry(f"{test} (50 clients, pipeline 16)", rate, "ops/s", "redis-benchmark -P 16")
        )
    # EVALSHA of Conveyor's claim script, each call claiming one real queued job.
    prefix = spec["ns"]
    os.environ.update(BENCH_BACKEND="redis", BENCH_URL=url, BENCH_NS=prefix)
    claims = {"50 clients": 1000 if smoke else 50_000, "1 client": 200 if smoke else 10_000}
    asyncio.run(_prefill_redis(url, prefix, sum(claims.values())))
    client = redis.Redis.from_url(url)
    claim = script("claim")
    client.script_load(claim.source)
    base = key_base(prefix)
    now = repr(time.time() + 1.0)
    args = ["evalsha", claim.sha, "1", base, "bench", "1", "30.0", now, "5000", "1", QUEUE]
    args += ["-1", "0"]
    for label, count in claims.items():
        clients = "50" if label == "50 clients" else "1"
        rates = _redis_benchmark(["-n", str(count), "-c", clients, *args], url)
        out.append(
            entry(
                f"EVALSHA claim.lua, 1 job per call ({label})",
                next(iter(rates.values()), None),
                "claims/s",
                "Conveyor's claim script on queued jobs",
            )
        )
    client.close()
    return out


# -- PostgreSQL -------------------------------------------------------------------------------
CLAIM_ONE = """WITH picked AS MATERIALIZED (
  SELECT id FROM {s}.jobs WHERE state = 'queued' AND queue = 'default'
  ORDER BY priority DESC, run_at, id LIMIT {limit} FOR UPDATE SKIP LOCKED)
UPDATE {s}.jobs j SET state = 'running', attempts = j.attempts + 1, fence = j.fence + 1,
  lease_owner = {owner}, lease_until = extract(epoch FROM clock_timestamp()) + 30,
  started_at = extract(epoch FROM clock_timestamp())
FROM picked p WHERE j.id = p.id RETURNING j.id AS jid, j.fence AS jfence"""

COMPLETE_ONE = """UPDATE {s}.jobs SET state = 'completed', finished_at = extract(epoch FROM
  clock_timestamp()), lease_owner = NULL, lease_until = NULL
WHERE id = :jid AND fence = :jfence AND state = 'running';"""

COMPLETE_MINE = """UPDATE {s}.jobs SET state = 'completed', finished_at = extract(epoch FROM
  clock_timestamp()), lease_owner = NULL, lease_until = NULL
WHERE state = 'running' AND lease_owner = 'pgbench' || :client_id;"""


def _one_line(sql: str) -> str:
    return " ".join(sql.split())


def postgres_limits(spec: dict[str, Any]) -> list[Entry]:
    import psycopg

    from conveyor.backends import factory_from_url

    url, schema, smoke = spec["pg_url"], spec["ns"], spec["smoke"]
    factory = factory_from_url(url, schema=schema)
    asyncio.run(factory.migrate())
    runs = [
        # (label, clients, transactions per client, jobs per transaction)
        ("1 client, 1 job per claim", 1, 100 if smoke else 5000, 1),
        ("8 clients, 1 job per claim", 8, 20 if smoke else 1000, 1),
        ("2 clients, 50 jobs per claim", 2, 10 if smoke else 200, 50),
    ]
    total = sum(c * t * j for _, c, t, j in runs)
    s = f'"{schema}"'
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            f"INSERT INTO {s}.jobs (id, task, queue, state, payload, run_at, created_at) "
            "SELECT lpad(g::text, 26, '0'), 'noop', 'default', 'queued', '\\x5b5b302e305d2c7b7d5d',"
            " extract(epoch FROM now()), extract(epoch FROM now()) "
            "FROM generate_series(1, %s) AS g",
            (total,),
        )
        conn.execute(f"VACUUM ANALYZE {s}.jobs")
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, clients, txs, per in runs:
            if per == 1:
                claim = _one_line(CLAIM_ONE.format(s=s, limit=1, owner="'pgbench'")) + " \\gset"
                body = claim + "\n" + _one_line(COMPLETE_ONE.format(s=s)) + "\n"
            else:
                owner = "'pgbench' || :client_id"
                claim = _one_line(CLAIM_ONE.format(s=s, limit=per, owner=owner)) + ";"
                body = claim + "\n" + _one_line(COMPLETE_MINE.format(s=s)) + "\n"
            path = os.path.join(tmp, "claim.sql")
            with open(path, "w") as fh:
                fh.write(body)
            argv = ["pgbench", "-n", "-M", "prepared", "-f", path, "-c", str(clients)]
            argv += ["-j", str(min(clients, 2)), "-t", str(txs), url]
            res = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
            match = re.search(r"tps = ([\d.]+) \(without initial", res.stdout)
            if res.returncode != 0 or match is None:
                out.append(entry(label, None, "jobs/s", f"pgbench failed: {res.stderr[-300:]}"))
                continue
            out.append(
                entry(
                    f"pgbench claim + complete, {label}",
                    float(match.group(1)) * per,
                    "jobs/s",
                    "SKIP LOCKED claim and fenced completion on Conveyor's schema, "
                    "2 commits per claim",
                )
            )
    asyncio.run(factory.destroy())
    return out


# -- SQLite -----------------------------------------------------------------------------------
NOW = "((julianday('now') - 2440587.5) * 86400.0)"
SQLITE_CLAIM = (
    "UPDATE conveyor_jobs SET state = 'running', attempts = attempts + 1, fence = fence + 1, "
    "lease_owner = 'cli', lease_until = {now} + 30, started_at = {now} WHERE rowid IN ("
    "SELECT rowid FROM conveyor_jobs WHERE state = 'queued' AND queue = 'default' "
    "ORDER BY priority DESC, run_at, id LIMIT {limit}) RETURNING id, fence;"
)
SQLITE_COMPLETE = (
    "UPDATE conveyor_jobs SET state = 'completed', finished_at = {now}, lease_owner = NULL, "
    "lease_until = NULL WHERE state = 'running' AND lease_owner = 'cli';"
)


def _sqlite_run(path: str, body: str, tmp: str) -> float:
    script = os.path.join(tmp, "run.sql")
    with open(script, "w") as fh:
        fh.write("PRAGMA journal_mode=WAL;\nPRAGMA synchronous=NORMAL;\n.output /dev/null\n")
        fh.write(body)
    start = time.perf_counter()
    with open(script, "rb") as stdin:
        subprocess.run(["sqlite3", path], stdin=stdin, capture_output=True, check=True, timeout=600)
    return time.perf_counter() - start


def sqlite_limits(spec: dict[str, Any]) -> list[Entry]:
    import sqlite3

    from conveyor.backends import factory_from_url

    smoke = spec["smoke"]
    out = []
    with tempfile.TemporaryDirectory(
        dir=spec["sqlite_dir"] if os.path.isdir(spec["sqlite_dir"]) else None
    ) as tmp:
        for label, jobs, per in (
            ("1 job per transaction", 500 if smoke else 20_000, 1),
            ("50 jobs per transaction", 2000 if smoke else 100_000, 50),
        ):
            path = os.path.join(tmp, f"limit-{per}.db")
            asyncio.run(factory_from_url(f"sqlite:///{path}").migrate())
            conn = sqlite3.connect(path)
            conn.execute(
                "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < ?) "
                "INSERT INTO conveyor_jobs (id, task, queue, state, payload, run_at, created_at) "
                "SELECT printf('%026d', i), 'noop', 'default', 'queued', x'5b5b302e305d2c7b7d5d', "
                "0, 0 FROM g",
                (jobs,),
            )
            conn.commit()
            conn.close()
            claim = SQLITE_CLAIM.format(now=NOW, limit=per)
            complete = SQLITE_COMPLETE.format(now=NOW)
            step = f"BEGIN IMMEDIATE;\n{claim}\nCOMMIT;\nBEGIN IMMEDIATE;\n{complete}\nCOMMIT;\n"
            empty = _sqlite_run(path, "", tmp)
            elapsed = _sqlite_run(path, step * (jobs // per), tmp) - empty
            out.append(
                entry(
                    f"sqlite3 shell claim + complete, {label}",
                    jobs / elapsed,
                    "jobs/s",
                    "UPDATE … RETURNING claim and completion, WAL, synchronous=NORMAL, "
                    "2 transactions per claim",
                )
            )
    return out


def main(argv: list[str]) -> int:
    from bench.stores import store_for

    spec = json.loads(argv[1])
    runner = {"redis": redis_limits, "postgres": postgres_limits, "sqlite": sqlite_limits}
    store = store_for(spec)
    try:
        # redis-benchmark writes its own keys (mylist, myzset, …): the store's flush of the
        # benchmark's database removes them afterwards.
        store.prepare()
        try:
            result: dict[str, Any] = {"entries": runner[spec["backend"]](spec)}
        finally:
            store.cleanup()
    except Exception as exc:  # noqa: BLE001 - reported in the results
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write("BENCH-RESULT " + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
