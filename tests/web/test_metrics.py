"""Prometheus metrics: the dashboard's store gauges, the worker's per-process metrics, and the
summed metrics of a supervised group of worker processes (multiprocess mode)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.web import dashboard

from .apps import build, populate
from .conftest import BASIC, client, config

ROOT = Path(__file__).resolve().parents[2]


async def test_dashboard_metrics_name_the_store_gauges(tmp_path: Path) -> None:
    app = build(f"sqlite:///{tmp_path}/m.db")
    await populate(app)
    async with client(dashboard(app, config()), **BASIC) as c:
        text = (await c.get("/metrics")).text
    for name in (
        'conveyor_jobs{queue="default",state="completed"} 1.0',
        'conveyor_queue_depth{queue="reports"} 1.0',
        'conveyor_dead_letters{queue="default"} 1.0',
        'conveyor_queue_oldest_age_seconds{queue="reports"}',
        "conveyor_workers 0.0",
        'conveyor_cluster_worker_slots{state="busy"} 0.0',
        "conveyor_store_scrape_seconds",
    ):
        assert name in text, name
    async with client(dashboard(app, config())) as anon:
        assert (await anon.get("/metrics")).status_code == 401
    async with client(dashboard(app, config(public_metrics=True))) as anon:
        assert (await anon.get("/metrics")).status_code == 200
    await app.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def _value(text: str, prefix: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(prefix):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.acceptance
@pytest.mark.parametrize("processes", [1, 2])
async def test_worker_metrics_count_outcomes_across_processes(
    tmp_path: Path, processes: int
) -> None:
    url = f"sqlite:///{tmp_path}/w.db"
    app: Conveyor = build(url)
    report, send = app.tasks["reports.build"], app.tasks["mail.send"]
    await app.enqueue_many([*(report.call(i) for i in range(6)), send.call("x@example.com")])
    port = _free_port()
    env = {**os.environ, "DASH_TEST_URL": url, "PYTHONPATH": str(ROOT)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "prom")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "conveyor", "worker", "tests.web.worker_app:make",
            "--processes", str(processes), "--metrics-port", str(port),
            "--metrics-host", "127.0.0.1", "--poll-interval", "0.2", "--log-level", "error",
        ],
        env=env,
        cwd=ROOT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        text = ""
        while time.monotonic() < deadline:
            try:
                text = _scrape(port)
            except OSError:
                text = ""
            done = _value(text, "conveyor_jobs_finished_total{")
            slots = _value(text, "conveyor_worker_slots{")
            if done >= 7 and slots == 10 * processes:  # every process has started
                break
            time.sleep(0.2)
        assert _value(text, 'conveyor_jobs_finished_total{outcome="succeeded"') == 6 or (
            _value(text, "conveyor_jobs_finished_total{") >= 7
        ), text
        assert 'outcome="dead"' in text and "conveyor_dead_letters_total" in text
        assert _value(text, "conveyor_job_duration_seconds_count") == 7
        assert 'le="900.0"' in text
        assert "conveyor_worker_slots" in text
        slots = _value(text, 'conveyor_worker_slots{state="free"}') + _value(
            text, 'conveyor_worker_slots{state="busy"}'
        )
        assert slots == 10 * processes
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        await app.close()
