"""``make demo``: enqueue a mixed workload, run a real worker process with a progress bar,
then show what happened (stats, dead letters, one job's timeline)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from rich.console import Console

ROOT = Path(__file__).resolve().parent.parent
os.chdir(ROOT)
sys.path.insert(0, str(ROOT))
shutil.rmtree(".demo", ignore_errors=True)
Path(".demo").mkdir()

from examples.demo_app import (  # noqa: E402 - the database directory must exist first
    app,
    charge_card,
    fingerprint,
    nightly_report,
    send_email,
)

console = Console()
APP = "examples.demo_app:app"


def conveyor(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "conveyor", *args], check=True)


console.rule("[bold]Conveyor demo — SQLite default (.demo/conveyor-demo.db)")
console.print("enqueueing from plain synchronous code (enqueue_sync / enqueue_many_sync)…")
report = nightly_report.options(delay="3s").enqueue_sync("2026-11-25")
urgent = send_email.options(priority="critical").enqueue_sync("ceo@example.com", "Q4 numbers")
app.enqueue_many_sync(
    [send_email.call(f"user{i}@example.com", "Welcome!") for i in range(150)]
    + [charge_card.call(customer, 1999) for customer in range(1, 61)]
    + [fingerprint.call(20_000 + i) for i in range(6)]
)
dup = send_email.options(idempotency_key="welcome-ada").enqueue_sync("ada@example.com", "Hi")
again = send_email.options(idempotency_key="welcome-ada").enqueue_sync("ada@example.com", "Hi")
stored = sum(app.inspect.counts_sync().total.values())
console.print(
    f"  {stored} jobs stored; one delayed 3 s ({report.id[:12]}…); idempotency key reused → "
    f"same job: {dup.id == again.id}"
)
app.close_sync()

console.print("\nstarting a worker process: conveyor worker " + APP + " --burst --progress")
conveyor("worker", APP, "--concurrency", "16", "--burst", "--progress", "--log-level", "critical")

console.print()
conveyor("stats", "--app", APP)
conveyor("dlq", "list", "--app", APP, "--limit", "5")
console.print(f"\nthe delayed report, in full (conveyor jobs show {report.id}):")
conveyor("jobs", "show", report.id, "--app", APP)
console.print(f"urgent email result: {urgent.result_sync(timeout=5)}")
console.rule("[bold green]demo finished")
