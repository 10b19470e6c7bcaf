"""Checked by mypy in tests/unit/test_typing.py: each line marked ``# E`` must be an error."""

from __future__ import annotations

from typing import assert_type

from conveyor import Conveyor

app = Conveyor("memory://")


@app.task
async def greet(name: str) -> str:
    return f"hello {name}"


@app.task
def add(a: int, b: int) -> int:
    return a + b


async def wrong() -> None:
    assert_type(await (await greet.enqueue("ada")).result(), int)  # E
    await greet.enqueue(42)  # E
    await add.enqueue(1, "2")  # E
    app.inspect.jobs_sync(stat="failed")  # E


def wrong_sync() -> None:
    assert_type(greet.enqueue_sync("ada").result_sync(), bytes)  # E
