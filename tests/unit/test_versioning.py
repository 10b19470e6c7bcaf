"""Payload versions: jobs stamped with their task's version, migrated step by step in the
worker, left for a newer worker when they are newer, dead-lettered when too old; inspection
counts the versions still waiting."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from conveyor import ConfigurationError, Conveyor, JobState
from conveyor.domain.clock import FakeClock
from conveyor.testing import memory_app, run_until_idle


def v1_app(url: str = "memory://", **options: Any) -> tuple[Conveyor, list[Any]]:
    app = Conveyor(url, **options)
    seen: list[Any] = []

    @app.task(name="send")
    def send(to: str) -> None:
        seen.append(("v1", to))

    return app, seen


def add_locale(args: list[Any], kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    return args, {**kwargs, "locale": "en"}


def to_address(args: list[Any], kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    (to,) = args
    return [], {**kwargs, "address": to}


def v3_app(url: str = "memory://", since: int = 1, **options: Any) -> tuple[Conveyor, list[Any]]:
    app = Conveyor(url, **options)
    seen: list[Any] = []

    @app.task(name="send", version=3, since=since, migrate={2: add_locale, 3: to_address})
    def send(address: str, locale: str) -> None:
        seen.append(("v3", address, locale))

    return app, seen


async def test_old_payloads_are_migrated_step_by_step() -> None:
    clock = FakeClock(1_700_000_000.0)
    old, _ = v1_app(clock=clock)
    new, seen = v3_app(backend_factory=old.factory, clock=clock)
    handle = await old.tasks["send"].enqueue("ada@example.com")
    assert (await handle.info()).record.payload_version == 1
    fresh = await new.tasks["send"].enqueue(address="bob@example.com", locale="fr")
    assert (await fresh.info()).record.payload_version == 3
    await run_until_idle(new)
    assert sorted(seen) == [("v3", "ada@example.com", "en"), ("v3", "bob@example.com", "fr")]


async def test_a_newer_job_waits_for_a_newer_worker_without_counting_an_attempt() -> None:
    clock = FakeClock(1_700_000_000.0)
    old, old_seen = v1_app(clock=clock)
    new, new_seen = v3_app(backend_factory=old.factory, clock=clock)
    handle = await new.tasks["send"].enqueue(address="ada@example.com", locale="en")
    worker = await run_until_idle(old)  # the old worker hands it back; no hot loop
    assert old_seen == [] and worker.stats.processed == 0
    record = (await handle.info()).record
    assert record.state is JobState.SCHEDULED and record.attempts == 0 and record.errors == ()
    clock.advance(10)
    await run_until_idle(new)
    assert new_seen == [("v3", "ada@example.com", "en")]
    assert (await handle.info()).record.attempts == 1


async def test_a_job_older_than_since_dead_letters_with_a_clear_code() -> None:
    old, _ = v1_app()
    new, seen = v3_app(backend_factory=old.factory, since=2)
    handle = await old.tasks["send"].enqueue("ada@example.com")
    await run_until_idle(new)
    info = await handle.info()
    assert seen == [] and info.state is JobState.FAILED
    assert info.error is not None and info.error.code == "version_unsupported"
    assert "task send" in info.error.message and "version 1" in info.error.message


async def test_a_migration_that_raises_names_the_task_and_the_version() -> None:
    app = memory_app(retry=3)

    def broken(args: list[Any], kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        raise KeyError("missing")

    old, _ = v1_app(backend_factory=app.factory)

    @app.task(name="send", version=2, migrate={2: broken})
    def send(to: str) -> None: ...

    handle = await old.tasks["send"].enqueue("ada@example.com")
    await run_until_idle(app)
    info = await handle.info()
    assert info.state is JobState.FAILED and info.record.attempts == 1
    assert info.error is not None and info.error.code == "migration_failed"
    assert "task send: migration to version 2 raised KeyError" in info.error.message


def test_bad_declarations_are_refused() -> None:
    app = memory_app()
    with pytest.raises(ConfigurationError, match="since must be"):
        app.task(name="a", version=2, since=3)(lambda: None)
    with pytest.raises(ConfigurationError, match="migration 1 is outside"):
        app.task(name="b", version=2, migrate={1: add_locale})(lambda: None)
    with pytest.raises(ConfigurationError, match="version must be"):
        app.task(name="c", version=0)(lambda: None)


async def test_inspection_counts_the_versions_still_waiting(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    old, _ = v1_app(url)
    new, _ = v3_app(url)
    for _ in range(2):
        await old.tasks["send"].enqueue("a@example.com")
    await new.tasks["send"].enqueue(address="b@example.com", locale="en")
    status = await new.inspect.versions("send")
    assert status.by_state == {"queued": {1: 2, 3: 1}}
    assert status.oldest == 1 and status.safe_since == 1 and status.version == 3
    await run_until_idle(new)
    status = await new.inspect.versions("send")
    assert status.by_state == {} and status.safe_since == 3
    assert status.to_dict()["safe_since"] == 3
    await old.close()
    await new.close()


async def test_the_cli_shows_the_version_distribution(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from conveyor.cli.main import cli

    url = f"sqlite:///{tmp_path}/jobs.db"
    old, _ = v1_app(url)
    new, _ = v3_app(url)
    await old.tasks["send"].enqueue("a@example.com")
    await new.tasks["send"].enqueue(address="b@example.com", locale="en")
    await old.close()
    await new.close()
    runner = CliRunner()
    result = await asyncio.to_thread(
        runner.invoke, cli, ["versions", "send", "--url", url, "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["by_state"] == {"queued": {"1": 1, "3": 1}}
    table = await asyncio.to_thread(runner.invoke, cli, ["versions", "send", "--url", url])
    assert table.exit_code == 0 and "oldest waiting: 1" in table.output
