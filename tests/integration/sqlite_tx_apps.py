"""A SQLite app whose handler writes its own table, in the queue's file, through the job's
transaction (worker subprocesses of test_sqlite_tx_completion.py). Configured by environment
variables."""

from __future__ import annotations

import os
import signal

from conveyor import Conveyor, RetryPolicy, current_job

app = Conveyor(
    os.environ.get("CONVEYOR_SQLITE_TX_URL", "sqlite:///sqlite-tx.db"),
    lease="2s",
    heartbeat_interval="0.5s",
)


@app.task(name="pay", retry=RetryPolicy.build(3, delay=0))
async def pay(order: int) -> str:
    job = current_job()
    conn = await job.transaction()
    conn.execute("INSERT INTO ledger (order_id, attempt) VALUES (?, ?)", (order, job.attempt))
    job.log.info("paid", order=order)
    if job.attempt == 1 and os.environ.get("CONVEYOR_SQLITE_TX_KILL_FIRST") == "1":
        os.kill(os.getpid(), signal.SIGKILL)  # dies after the write, before the completion
    if job.attempt == 1 and order < 0:
        raise RuntimeError("fails after writing: the write must roll back")
    return "paid"
