"""An example FastAPI service: enqueues typed jobs and reports on them; a worker runs in the
same event loop (``lifespan(..., worker=...)``). Serve it with::

    CONVEYOR_URL=sqlite:///jobs.db uvicorn examples.fastapi_app.main:api
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from conveyor import Conveyor, WorkerConfig
from conveyor.contrib.fastapi import ConveyorDep, JobHandleDep, lifespan

app = Conveyor(os.environ.get("CONVEYOR_URL", "sqlite:///jobs.db"))


class Signup(BaseModel):
    email: str
    plan: str = "free"


class Welcome(BaseModel):
    to: str
    text: str


@app.task(name="send_welcome", retry=3)
async def send_welcome(signup: Signup) -> Welcome:
    return Welcome(to=signup.email, text=f"Welcome to the {signup.plan} plan")


api = FastAPI(lifespan=lifespan(app, worker=WorkerConfig(concurrency=4, grace=5.0)))


@api.post("/signups", status_code=202)
async def create_signup(signup: Signup, conveyor: ConveyorDep) -> dict[str, Any]:
    handle = await send_welcome.enqueue(signup)
    return {"job": handle.id, "tasks": sorted(conveyor.tasks)}


@api.get("/jobs/{job_id}")
async def get_job(handle: JobHandleDep) -> dict[str, Any]:
    info = await handle.info()
    return {"id": info.id, "state": info.state.value, "result": info.result}
