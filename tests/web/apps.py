"""The app the dashboard tests look at: a few tasks, a schedule, and jobs in every state."""

from __future__ import annotations

from typing import Any

from conveyor import Conveyor
from conveyor.testing import run_until_idle

SECRET_CARD = "4111-1111-1111-1111"
SECRET_TOKEN = "tok-very-secret-42"


def build(url: str, **options: Any) -> Conveyor:
    app = Conveyor(url, **options)

    @app.task(name="billing.charge")
    def charge(account: str, card: str, amount: int = 0) -> dict[str, Any]:
        return {"ok": True, "token": SECRET_TOKEN, "amount": amount}

    @app.task(name="mail.send", retry=1)
    def send(to: str) -> None:
        raise RuntimeError(f"smtp refused {to}")

    @app.task(name="reports.build")
    def build_report(n: int) -> int:
        return n * 2

    app.schedule("nightly-report", build_report, cron="0 3 * * *", args=(7,))
    return app


async def populate(app: Conveyor) -> dict[str, str]:
    """Jobs in completed, failed (two codes), queued, scheduled and cancelled states."""
    charge, send, report = (app.tasks[n] for n in ("billing.charge", "mail.send", "reports.build"))
    done = await charge.enqueue("acct-1", SECRET_CARD, amount=5)
    dead = await send.enqueue("a@example.com")
    await run_until_idle(app)
    queued = await report.options(queue="reports").enqueue(1)
    later = await report.options(delay="1h", idempotency_key="report-key-1").enqueue(2)
    gone = await report.options(queue="reports").enqueue(3)
    await app.cancel(gone.id)
    await app.schedules.sync()
    return {
        "completed": done.id,
        "failed": dead.id,
        "queued": queued.id,
        "scheduled": later.id,
        "cancelled": gone.id,
    }
