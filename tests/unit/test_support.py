"""The test support code can fail: the traceback check and the shared helpers."""

from __future__ import annotations

import pytest

from tests.acceptance.conftest import tracebacks, unexpected_tracebacks
from tests.support import in_ci, server_of, wait_until

LOG = """\
12:00 ERROR conveyor.job: job 1 failed
Traceback (most recent call last):
  File "x.py", line 1, in handler
    raise RuntimeError("boom")
RuntimeError: boom
12:01 WARNING conveyor.worker: something
Traceback (most recent call last):
  File "y.py", line 2, in other
    x[1]
KeyError: 1
"""


def test_each_traceback_is_checked_on_its_own() -> None:
    assert [b.splitlines()[-1] for b in tracebacks(LOG)] == ["RuntimeError: boom", "KeyError: 1"]
    # The expected one does not excuse the other (it did: one "boom" excused everything).
    [left] = unexpected_tracebacks(LOG, ("RuntimeError: boom",))
    assert left.endswith("KeyError: 1")
    assert unexpected_tracebacks(LOG, ("RuntimeError: boom", "KeyError: 1")) == []
    assert unexpected_tracebacks("no tracebacks here\n", ()) == []


def test_ci_flag_and_server_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, expected in (("", False), ("0", False), ("false", False), ("1", True)):
        monkeypatch.setenv("CI", value)
        assert in_ci() is expected
    assert server_of("postgresql://u@db.example:6543/x") == ("db.example", 6543)
    assert server_of("redis://cache") == ("cache", 6379)


async def test_wait_until_returns_the_value_or_fails_naming_the_condition() -> None:
    calls = []

    def ready() -> int:
        calls.append(1)
        return len(calls) if len(calls) >= 3 else 0

    assert await wait_until(ready, 5, interval=0.001) == 3
    with pytest.raises(AssertionError, match="the sky to fall"):
        await wait_until(lambda: False, 0.05, interval=0.01, message="the sky to fall")
