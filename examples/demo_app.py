"""The tasks the demo runs (``make demo``). A small but real workload on the SQLite default."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random

from conveyor import Conveyor, RetryPolicy, current_job

DB = os.environ.get("CONVEYOR_DEMO_DB", ".demo/conveyor-demo.db")

app = Conveyor(f"sqlite:///{DB}", lease="10s", heartbeat_interval="1s")
app.queue("emails", concurrency=6, priority=10, retry=RetryPolicy.build(3, delay="200ms"))
app.queue("billing", priority=5, dead_letter="billing-dead")
app.queue("reports")


@app.task(name="send_email", queue="emails", timeout="5s")
async def send_email(to: str, subject: str) -> dict[str, str]:
    """Pretend to call a mail API; about one call in five fails and is retried."""
    job = current_job()
    await asyncio.sleep(random.uniform(0.005, 0.03))
    if random.random() < 0.2 and job.attempt == 1:
        raise ConnectionError("mail server said 421, try again later")
    job.log.info("sent", to=to)
    return {"to": to, "status": "sent"}


@app.task(
    name="charge_card", queue="billing", retry=RetryPolicy.build(2, backoff="fixed", delay="300ms")
)
def charge_card(customer: int, cents: int) -> str:
    """A sync handler (runs in a thread); declined cards fail permanently into the DLQ."""
    if customer % 13 == 0:
        raise ValueError(f"card of customer {customer} was declined")
    return f"charged {cents / 100:.2f} to customer {customer}"


@app.task(name="fingerprint", queue="reports", executor="process", timeout="20s")
def fingerprint(rounds: int) -> str:
    """CPU-bound work in a child process."""
    digest = b"conveyor"
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()[:16]


@app.task(name="nightly_report", queue="reports")
async def nightly_report(day: str) -> str:
    """A delayed job: enqueued to start a few seconds later."""
    job = current_job()
    for step in range(1, 5):
        job.progress({"step": step, "of": 4})
        await asyncio.sleep(0.05)
    return f"report for {day} ready"
