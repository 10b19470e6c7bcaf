"""Schedules on the memory backend with a fake clock: tick math (DST included), overlap,
missed runs, management, re-sync, and many schedulers producing one job per tick."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from conveyor import ConfigurationError, Conveyor, JobState
from conveyor.domain.clock import FakeClock
from conveyor.scheduler.scheduler import Schedules
from conveyor.scheduler.timing import cron_ticks, load_zone
from conveyor.testing import memory_app, run_until_idle

NY = ZoneInfo("America/New_York")


def ts(*parts: int, tz: ZoneInfo = NY, fold: int = 0) -> float:
    return datetime(*parts, tzinfo=tz, fold=fold).timestamp()  # type: ignore[misc]


def local(t: float, tz: ZoneInfo = NY) -> str:
    return datetime.fromtimestamp(t, tz=tz).strftime("%m-%d %H:%M %Z")


def take(it: object, n: int) -> list[float]:
    out = []
    for value in it:  # type: ignore[attr-defined]
        out.append(value)
        if len(out) == n:
            break
    return out


def test_skipped_hour_fires_once_after_the_gap() -> None:
    # 2026-03-08: New York clocks jump from 02:00 EST to 03:00 EDT.
    ticks = take(cron_ticks("30 2 * * *", NY, ts(2026, 3, 7, 12, 0)), 3)
    assert [local(t) for t in ticks] == ["03-08 03:30 EDT", "03-09 02:30 EDT", "03-10 02:30 EDT"]
    half_hourly = take(cron_ticks("*/30 * * * *", NY, ts(2026, 3, 8, 1, 10)), 5)
    assert [local(t) for t in half_hourly] == [
        "03-08 01:30 EST",
        "03-08 03:00 EDT",
        "03-08 03:30 EDT",
        "03-08 04:00 EDT",
        "03-08 04:30 EDT",
    ]
    assert half_hourly == sorted(set(half_hourly))


def test_repeated_hour_fires_once() -> None:
    # 2026-11-01: 02:00 EDT falls back to 01:00 EST; 01:30 happens twice.
    ticks = take(cron_ticks("30 1 * * *", NY, ts(2026, 10, 31, 12, 0)), 2)
    assert [local(t) for t in ticks] == ["11-01 01:30 EDT", "11-02 01:30 EST"]
    hourly = take(cron_ticks("0 * * * *", NY, ts(2026, 11, 1, 0, 30)), 3)
    assert [local(t) for t in hourly] == ["11-01 01:00 EDT", "11-01 02:00 EST", "11-01 03:00 EST"]


def test_seconds_field_and_bad_declarations_point_at_the_field() -> None:
    ticks = take(cron_ticks("*/15 * * * * *", load_zone("UTC"), 1_700_000_000.0), 3)
    assert [t - ticks[0] for t in ticks] == [0, 15, 30]
    app = memory_app()

    @app.task
    async def job() -> None: ...

    with pytest.raises(ConfigurationError, match="cron"):
        app.schedule("a", job, cron="61 * * * *")
    with pytest.raises(ConfigurationError, match="cron"):
        app.schedule("b", job, cron="* * *")
    with pytest.raises(ConfigurationError, match="timezone"):
        app.schedule("c", job, cron="* * * * *", timezone="Mars/Olympus")
    with pytest.raises(ConfigurationError, match="every"):
        app.schedule("d", job, every=0)
    with pytest.raises(ConfigurationError, match="exactly one"):
        app.schedule("e", job)


def make_app(clock: FakeClock) -> tuple[Conveyor, list[str]]:
    app = memory_app(clock=clock)
    ran: list[str] = []

    @app.task(name="ping")
    async def ping(label: str) -> None:
        ran.append(label)

    return app, ran


async def test_interval_schedule_runs_once_per_tick() -> None:
    clock = FakeClock(1_800_000_000.0)
    app, ran = make_app(clock)
    app.schedule("every-10s", "ping", every="10s", args=["tick"])
    await app.schedules.sync()
    assert await app.schedules.tick() == 0
    for _ in range(3):
        clock.advance(10)
        assert await app.schedules.tick() == 1
        assert await app.schedules.tick() == 0  # same tick again: nothing new
        await run_until_idle(app)
    assert ran == ["tick", "tick", "tick"]
    history = await app.schedules.history("every-10s")
    assert [h["outcome"] for h in history] == ["enqueued"] * 3
    assert all(h["state"] == "completed" for h in history)


async def test_overlap_is_skipped_by_default_and_allowed_on_request() -> None:
    clock = FakeClock(1_800_000_000.0)
    app, _ = make_app(clock)
    app.schedule("busy", "ping", every=60, args=["b"])
    app.schedule("free", "ping", every=60, args=["f"], overlap=True)
    await app.schedules.sync()
    clock.advance(60)
    assert await app.schedules.tick() == 2
    clock.advance(60)  # nothing ran in between: the first jobs are still queued
    assert await app.schedules.tick() == 1
    busy = await app.schedules.history("busy")
    assert [h["outcome"] for h in busy] == ["skipped_overlap", "enqueued"]


async def test_missed_runs_skip_catch_up_and_limit() -> None:
    clock = FakeClock(1_800_000_000.0)
    app, _ = make_app(clock)
    app.schedule("skip", "ping", every=60, args=["s"], overlap=True)
    app.schedule("all", "ping", every=60, args=["a"], overlap=True, on_missed="catch_up")
    app.schedule(
        "three", "ping", every=60, args=["t"], overlap=True, on_missed="catch_up", catch_up_limit=3
    )
    await app.schedules.sync()
    clock.advance(600)  # every scheduler was down for ten ticks; the tenth is due right now
    assert await app.schedules.tick() == 1 + 10 + 3
    skipped = await app.schedules.history("skip")
    assert [h["outcome"] for h in skipped].count("missed") == 9
    caught = await app.schedules.history("three")
    assert [h["outcome"] for h in caught].count("enqueued") == 3
    # back to normal: the next on-time tick runs for every policy
    clock.advance(60)
    assert await app.schedules.tick() == 3


async def test_pause_resume_trigger_update_remove() -> None:
    clock = FakeClock(1_800_000_000.0)
    app, ran = make_app(clock)
    app.schedule("nightly", "ping", cron="0 3 * * *", timezone="Europe/Paris", args=["n"])
    await app.schedules.sync()
    (info,) = await app.schedules.list()
    assert info.next_run is not None and not info.paused
    assert datetime.fromtimestamp(info.next_run, ZoneInfo("Europe/Paris")).hour == 3
    await app.schedules.pause("nightly")
    assert (await app.schedules.get("nightly")).paused
    clock.advance(2 * 86400)
    assert await app.schedules.tick() == 0
    await app.schedules.resume("nightly")
    assert await app.schedules.tick() == 0  # ticks that passed while paused do not run
    job_id = await app.schedules.trigger("nightly")
    await run_until_idle(app)
    assert ran == ["n"]
    assert (await app.schedules.get("nightly")).last_job_id == job_id
    before = (await app.schedules.get("nightly")).next_run
    await app.schedules.update("nightly", cron="0 4 * * *")
    after = (await app.schedules.get("nightly")).next_run
    assert before is not None and after is not None and after - before == 3600
    with pytest.raises(ValueError, match="cron"):
        await app.schedules.update("nightly", cron="bogus")
    await app.schedules.remove("nightly")
    assert await app.schedules.list() == []


async def test_resync_keeps_pause_state_and_history() -> None:
    clock = FakeClock(1_800_000_000.0)
    app, _ = make_app(clock)
    app.schedule("hourly", "ping", cron="0 * * * *", args=["h"])
    await app.schedules.sync()
    clock.advance(3600)
    await app.schedules.tick()
    await app.schedules.pause("hourly")
    # a new process starts with the same code: a fresh Schedules over the same store
    again = Schedules(app)
    again.declare(app.schedules.declared["hourly"])
    await again.sync()
    info = await again.get("hourly")
    assert info.paused and info.last_job_id is not None
    assert len(await again.history("hourly")) == 1


async def test_many_schedulers_make_one_job_per_tick() -> None:
    clock = FakeClock(1_800_000_000.0)
    app, _ = make_app(clock)
    app.schedule("fast", "ping", every="1s", args=["x"], overlap=True)
    schedulers = [Schedules(app) for _ in range(5)]
    for s in schedulers:
        s.declare(app.schedules.declared["fast"])
        await s.sync()
    for _ in range(40):
        clock.advance(1)
        for s in schedulers:
            await s.tick()
    counts = await app.inspect.counts()
    assert counts.total["queued"] == 40
    jobs = await app.inspect.jobs(limit=100)
    assert len({j.record.metadata["tick"] for j in jobs}) == 40
    assert all(j.state is JobState.QUEUED for j in jobs)


async def test_inline_task_schedule_and_start_end_window() -> None:
    clock = FakeClock(datetime(2030, 1, 1, tzinfo=UTC).timestamp())
    app = memory_app(clock=clock)

    @app.task(
        schedule={
            "every": "1m",
            "start": datetime(2030, 1, 1, 0, 5, tzinfo=UTC),
            "end": datetime(2030, 1, 1, 0, 7, tzinfo=UTC),
            "overlap": True,
        }
    )
    async def windowed() -> None: ...

    await app.schedules.sync()
    enqueued = 0
    for _ in range(10):
        clock.advance(60)
        enqueued += await app.schedules.tick()
    assert enqueued == 3  # 00:05, 00:06, 00:07
