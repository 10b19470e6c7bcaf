"""Several scheduler processes on one store make exactly one job per tick, with no gaps —
against SQLite, PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor
from tests.contract._support import require_kind
from tests.support import POSTGRES_URL, REDIS_URL

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = 4
RUN_SECONDS = 7.0


def store(kind: str, tmp_path: Path) -> tuple[str, dict[str, Any]]:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/sched.db", {}
    if kind == "postgres":
        return POSTGRES_URL, {
            "schema": f"sched_{uuid.uuid4().hex[:10]}",
            "auto_migrate": True,
        }
    return REDIS_URL, {"prefix": f"sched{uuid.uuid4().hex[:10]}"}


@pytest.mark.parametrize("kind", ["sqlite", "postgres", "redis"])
async def test_many_scheduler_processes_one_job_per_tick(kind: str, tmp_path: Path) -> None:
    require_kind(kind)
    url, options = store(kind, tmp_path)
    app = Conveyor(url, backend_options=options)
    await app.migrate()
    env = {**os.environ, "CONVEYOR_SCHED_URL": url, "CONVEYOR_SCHED_OPTIONS": json.dumps(options)}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "conveyor",
                "scheduler",
                "tests.integration.sched_apps:app",
                "--poll-interval",
                "0.2",
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(PROCESSES)
    ]
    try:
        deadline = time.monotonic() + 60
        while True:  # wait until the schedulers have produced a few ticks, then some more
            counts = await app.inspect.counts()
            if counts.total.get("queued", 0) >= 2:
                break
            assert time.monotonic() < deadline, "no scheduler produced a job"
            assert all(p.poll() is None for p in procs), "a scheduler process died"
            await asyncio.sleep(0.1)
        started = time.monotonic()
        while time.monotonic() - started < RUN_SECONDS:
            assert all(p.poll() is None for p in procs), "a scheduler process died"
            await asyncio.sleep(0.2)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=30)
    jobs = await app.inspect.jobs(limit=10_000)
    ticks = sorted(float(j.record.metadata["tick"]) for j in jobs)
    try:
        assert len(ticks) == len(set(ticks)), "a tick produced more than one job"
        assert len(ticks) >= RUN_SECONDS - 1
        gaps = [b - a for a, b in itertools.pairwise(ticks)]
        assert all(abs(g - 1.0) < 1e-6 for g in gaps), f"ticks skipped: {gaps}"
        history = await app.schedules.history("every-second")
        assert {h["outcome"] for h in history} == {"enqueued"}
    finally:
        await app.close()
        await app.factory.destroy()
