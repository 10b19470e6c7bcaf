"""The test toolkit: the user's app rebound to memory:// on a fake clock, ``execute`` (the
whole pipeline, retries advanced on the clock), ``run`` (the handler alone), the pytest
plugin's fixtures loaded through the entry point."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from conveyor import Conveyor, JobState, ValidationError
from conveyor.contrib.pytest import Harness
from conveyor.domain.clock import FakeClock
from tests.unit.testkit_app import tasks as user

pytest_plugins = ["pytester"]


@pytest.fixture
def conveyor_app() -> Conveyor:
    user.calls.clear()
    return user.app


async def test_execute_runs_the_whole_pipeline_with_retries_on_the_fake_clock(
    conveyor: Harness, conveyor_clock: FakeClock
) -> None:
    start = conveyor_clock.now()
    outcome = await conveyor.execute(user.charge, {"id": 7, "amount": "12.5"})
    assert outcome.ok and outcome.state is JobState.COMPLETED
    assert outcome.result == 12.5 and outcome.attempts == 3
    assert [e.message for e in outcome.logs] == ["charging"] * 3
    assert user.calls[0] == "enqueue" and "before:3" in user.calls
    assert conveyor_clock.now() > start  # the retry backoff was advanced, not slept
    (mail,) = await conveyor.jobs(user.notify)  # what the handler enqueued ran too
    assert mail.state is JobState.COMPLETED and mail.result == "mail for 7"
    await conveyor.assert_enqueued(user.notify, 7)
    with pytest.raises(AssertionError, match="no job of"):
        await conveyor.assert_enqueued(user.notify, 8)


async def test_execute_reports_failures_instead_of_raising(conveyor: Harness) -> None:
    @user.app.task(name="always_fails", retry=2)
    def always_fails() -> None:
        raise ValueError("nope")

    try:
        outcome = await conveyor.execute(always_fails)
        assert outcome.state is JobState.FAILED and outcome.attempts == 2
        assert outcome.error is not None and "nope" in outcome.error.message
    finally:
        del user.app.tasks["always_fails"]


async def test_run_calls_the_handler_alone_with_a_context(conveyor: Harness) -> None:
    assert await conveyor.run(user.notify, 3) == "mail for 3"
    with pytest.raises(ConnectionError):  # attempt 1: no retries, no queue
        await conveyor.run(user.charge, user.Order(id=1, amount=2.0))
    with pytest.raises(ValidationError, match="argument 'order'"):
        await conveyor.run(user.charge, {"id": "x"})  # type: ignore[arg-type]
    assert await conveyor.jobs() == []  # nothing was enqueued


async def test_drain_advances_through_delays_only_when_asked(
    conveyor: Harness, conveyor_drain: object
) -> None:
    handle = await user.later.options(delay=timedelta(hours=1)).enqueue()
    await conveyor.drain(advance=False)
    assert await handle.state() is JobState.SCHEDULED
    await conveyor.drain()
    assert await handle.result(timeout=1) == "done"


async def test_the_app_gets_its_own_store_back() -> None:
    factory = user.app.factory
    async with Harness(user.app) as harness:
        assert user.app.factory is not factory and user.app.clock is harness.clock
    assert user.app.factory is factory and user.app.clock is None


def test_the_plugin_loads_through_its_entry_point_and_reads_the_ini_option(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))
    pytester.makeini(
        """
        [pytest]
        asyncio_mode = auto
        conveyor_app = tests.unit.testkit_app.tasks:app
        """
    )
    pytester.makepyfile(
        """
        from tests.unit.testkit_app.tasks import notify

        async def test_it(conveyor, conveyor_drain):
            handle = await notify.enqueue(5)
            await conveyor_drain()
            assert await handle.result(timeout=1) == "mail for 5"
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=1)
