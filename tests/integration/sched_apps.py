"""An app with a one-second schedule, for scheduler processes started by
test_scheduler_processes.py (store chosen by environment variables)."""

from __future__ import annotations

import json
import os

from conveyor import Conveyor

app = Conveyor(
    os.environ.get("CONVEYOR_SCHED_URL", "memory://"),
    backend_options=json.loads(os.environ.get("CONVEYOR_SCHED_OPTIONS", "{}")),
)


@app.task(name="beat")
async def beat(n: int) -> None:
    """Never run in the test: only enqueued jobs are counted."""


app.schedule("every-second", beat, every="1s", args=[1], overlap=True)
