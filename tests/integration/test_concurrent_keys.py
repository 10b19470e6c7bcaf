"""Concurrent enqueues of the same idempotency keys store one job per key: several processes on
one SQLite file, several processes on one Redis (PostgreSQL's test is in
test_postgres_backend.py). Each process enqueues every key in a different order, all released
at once; every answer for a key must name the one stored job, exactly one of them ``created``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from conveyor.backends import factory_from_url
from conveyor.domain.job import JobFilter
from tests.support import REDIS_URL, require_server

REPO = Path(__file__).resolve().parents[2]
PROCESSES = 4
KEYS = 40

SCRIPT = """
import asyncio, json, os, random, sys, time
from conveyor.backends import factory_from_url
from conveyor.domain.ids import new_job_id
from conveyor.domain.job import NewJob

url, options, start_at, seed = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3]), sys.argv[4]

async def main() -> None:
    factory = factory_from_url(url, **options)
    client = factory.create()
    await client.open()
    keys = [f"key-{i}" for i in range(int(sys.argv[5]))]
    random.Random(seed).shuffle(keys)
    while time.time() < start_at:  # every process starts enqueueing at the same instant
        await asyncio.sleep(0.001)
    out = []
    for key in keys:
        job = NewJob(id=new_job_id(), task="t", queue="q", payload=b"[]", idempotency_key=key)
        [result] = await client.enqueue([job])
        out.append([key, result.id, result.created])
    await client.close()
    print(json.dumps(out))

asyncio.run(main())
"""


def _store(kind: str, tmp_path: Path) -> tuple[str, dict[str, Any]]:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/keys.db", {}
    require_server(REDIS_URL)
    return REDIS_URL, {"prefix": f"keys{uuid.uuid4().hex[:10]}"}


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_concurrent_processes_store_one_job_per_key(kind: str, tmp_path: Path) -> None:
    url, options = _store(kind, tmp_path)
    factory = factory_from_url(url, **options)
    await factory.migrate()
    try:
        start_at = time.time() + 2.0  # time for every process to start and connect
        argv = [sys.executable, "-c", SCRIPT, url, json.dumps(options), str(start_at)]
        procs = [
            subprocess.Popen(
                [*argv, str(n), str(KEYS)],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for n in range(PROCESSES)
        ]
        answers: dict[str, list[tuple[str, bool]]] = defaultdict(list)
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            for key, job_id, created in json.loads(out):
                answers[key].append((job_id, created))
        assert len(answers) == KEYS
        for key, seen in answers.items():
            assert len(seen) == PROCESSES
            assert len({job_id for job_id, _ in seen}) == 1, (key, seen)  # one job per key
            assert sum(created for _, created in seen) == 1, (key, seen)  # created once
        client = factory.create()
        await client.open()
        try:
            stored = await client.list_jobs(JobFilter(), limit=10_000)
        finally:
            await client.close()
        assert sorted(r.idempotency_key or "" for r in stored) == sorted(answers)
        assert {r.id for r in stored} == {seen[0][0] for seen in answers.values()}
    finally:
        await factory.destroy()
