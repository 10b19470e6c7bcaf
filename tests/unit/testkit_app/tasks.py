"""A user's app, as the pytest plugin's tests see it (declared for SQLite, tested in memory)."""

from __future__ import annotations

from pydantic import BaseModel

from conveyor import Conveyor, EnqueueCall, Middleware, current_job
from conveyor.core.middleware import EnqueueNext, ExecuteCall, ExecuteNext

app = Conveyor("sqlite:///never-created-by-tests.db", retry=3)
calls: list[str] = []


class Order(BaseModel):
    id: int
    amount: float


class Audit(Middleware):
    async def enqueue(self, calls_: list[EnqueueCall], call_next: EnqueueNext) -> list:  # type: ignore[type-arg]
        calls.append("enqueue")
        return await call_next(calls_)

    async def execute(self, call: ExecuteCall, call_next: ExecuteNext) -> object:
        calls.append(f"before:{call.ctx.attempt}")
        try:
            return await call_next(call)
        finally:
            calls.append("after")


app.use(Audit())


@app.task(name="charge")
def charge(order: Order) -> float:
    ctx = current_job()
    ctx.log.info("charging", order=order.id)
    if ctx.attempt < 3:
        raise ConnectionError("gateway busy")
    notify.enqueue_sync(order.id)
    return order.amount


@app.task(name="notify", queue="mail")
def notify(order_id: int) -> str:
    return f"mail for {order_id}"


@app.task(name="later")
def later() -> str:
    return "done"
