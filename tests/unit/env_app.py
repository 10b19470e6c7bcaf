"""An app of its own for the environment-configuration CLI test (memory store, in-process)."""

from __future__ import annotations

from conveyor import Conveyor

app = Conveyor("memory://")


@app.task(name="notify", queue="notifications")
def notify(to: str) -> str:
    return f"sent to {to}"


@app.task(name="report")
def report(report_id: int) -> None: ...
