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


@app.task(executor="process")
def whoami() -> int:
    """The child's pid (recycling tests)."""
    return os.getpid()


@app.task(executor="process")
def hog(megabytes: int) -> int:
    """Keeps ``megabytes`` alive in the child (a leak), then returns its pid."""
    _LEAK.append(bytearray(megabytes * 2**20))
    return os.getpid()


_LEAK: list[bytearray] = []


@app.task(executor="process")
def reports(steps: int) -> int:
    """Reports progress from the child at each step."""
    from conveyor import current_job

    for i in range(1, steps + 1):
        current_job().progress({"step": i, "of": steps})
    return steps


@app.task(executor="process", timeout=30, soft_timeout=0.3)
def soft_spin() -> str:
    """Works until the soft limit interrupts it, then cleans up and returns."""
    from conveyor import SoftTimeLimitExceeded

    try:
        deadline = time.time() + 25
        while time.time() < deadline:
            pass
    except SoftTimeLimitExceeded:
        return "cleaned up"
    return "never interrupted"
