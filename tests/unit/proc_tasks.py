"""Process-mode tasks for the worker tests (importable by child processes)."""

from __future__ import annotations

import os
import time

from conveyor.testing import memory_app

app = memory_app()


@app.task(executor="process")
def cube(x: int) -> int:
    return x**3


@app.task(executor="process", timeout=0.5)
def spin() -> None:
    deadline = time.time() + 60
    while time.time() < deadline:
        pass


@app.task(executor="process")
def die() -> None:
    os._exit(17)
