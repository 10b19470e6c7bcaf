"""A PostgreSQL app whose handler writes through the job's transaction (used by worker
subprocesses in test_tx_completion.py). Configured by environment variables."""

from __future__ import annotations

import os
import signal

from conveyor import Conveyor, RetryPolicy, current_job

SCHEMA = os.environ.get("CONVEYOR_TX_SCHEMA", "conveyor_tx")
app = Conveyor(
    os.environ.get("CONVEYOR_TX_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    backend_options={"schema": SCHEMA},
    lease="2s",
    heartbeat_interval="0.5s",
)


@app.task(name="pay", retry=RetryPolicy.build(3, delay=0))
async def pay(order: int) -> str:
    job = current_job()
    conn = await job.transaction()
    await conn.execute(
        f'INSERT INTO "{SCHEMA}".ledger (order_id, attempt) VALUES (%s, %s)', (order, job.attempt)
    )
    if job.attempt == 1 and os.environ.get("CONVEYOR_TX_KILL_FIRST") == "1":
        os.kill(os.getpid(), signal.SIGKILL)  # dies after the write, before the completion
    if job.attempt == 1 and order < 0:
        raise RuntimeError("fails after writing: the write must roll back")
    return "paid"
