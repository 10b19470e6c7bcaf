"""An app for the seed-000 interop tests (memory store; the CLI runs in-process)."""

from __future__ import annotations

from conveyor import Conveyor

app = Conveyor("memory://")


@app.task(name="notifications.send_email", queue="notifications", retry=5, timeout="1m")
def send_email(to: str, subject: str = "hello") -> str:
    return f"{subject} -> {to}"


@app.task(name="reports.build")
def build(report_id: int) -> None: ...
