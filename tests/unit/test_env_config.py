"""Configuration from the environment: every CLI option from CONVEYOR_<COMMAND>_<OPTION>,
and explicit from_env() helpers for the app and the worker (nothing is read implicitly)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from conveyor import ConfigurationError, Conveyor, JobState, WorkerConfig
from conveyor.cli.main import cli
from tests.unit import env_app


def test_the_app_from_env() -> None:
    app = Conveyor.from_env(
        {
            "CONVEYOR_URL": "memory://",
            "CONVEYOR_LEASE": "10s",
            "CONVEYOR_HEARTBEAT_INTERVAL": "0.5",
            "CONVEYOR_MAX_STALLS": "5",
            "CONVEYOR_DEFAULT_QUEUE": "jobs",
            "CONVEYOR_SERIALIZER": "msgpack",
            "CONVEYOR_RETRY": "4",
        },
        max_stalls=7,
    )
    assert app.url == "memory://" and app.lease == 10.0 and app.heartbeat_interval == 0.5
    assert app.max_stalls == 7  # explicit options win
    assert app.default_queue == "jobs" and app.serializer.name == "msgpack"
    assert app.retry.attempts == 4
    with pytest.raises(ConfigurationError, match="CONVEYOR_MAX_STALLS='many'"):
        Conveyor.from_env({"CONVEYOR_URL": "memory://", "CONVEYOR_MAX_STALLS": "many"})


def test_the_worker_config_from_env() -> None:
    config = WorkerConfig.from_env(
        {
            "CONVEYOR_WORKER_QUEUES": "mail, default",
            "CONVEYOR_WORKER_TASKS": "email.*",
            "CONVEYOR_WORKER_CONCURRENCY": "4",
            "CONVEYOR_WORKER_GRACE": "1m",
            "CONVEYOR_WORKER_BURST": "yes",
            "CONVEYOR_WORKER_NO_SCHEDULER": "1",
            "UNRELATED": "x",
        }
    )
    assert config.queues == ("mail", "default") and config.tasks == ("email.*",)
    assert config.concurrency == 4 and config.grace == 60.0
    assert config.burst and not config.scheduler
    assert WorkerConfig.from_env({}) == WorkerConfig()
    with pytest.raises(ConfigurationError, match="CONVEYOR_WORKER_BURST"):
        WorkerConfig.from_env({"CONVEYOR_WORKER_BURST": "maybe"})


@pytest.fixture
def restore_logging() -> Iterator[None]:
    logger = logging.getLogger("conveyor")
    saved = (logger.handlers[:], logger.propagate, logger.level)
    try:
        yield
    finally:
        logger.handlers[:], logger.propagate, logger.level = saved


def test_cli_options_come_from_the_environment(restore_logging: None) -> None:
    app = env_app.app
    mail = env_app.notify.enqueue_sync("ada@example.com")
    report = env_app.report.enqueue_sync(1)
    runner = CliRunner()
    env = {
        "CONVEYOR_APP": "tests.unit.env_app:app",
        "CONVEYOR_WORKER_QUEUES": "notifications",
        "CONVEYOR_WORKER_BURST": "1",
        "CONVEYOR_WORKER_CONCURRENCY": "2",
        "CONVEYOR_WORKER_LOG_LEVEL": "warning",
    }
    result = runner.invoke(cli, ["worker"], env=env)
    assert result.exit_code == 0, result.output
    assert mail.state_sync() is JobState.COMPLETED
    assert report.state_sync() is JobState.QUEUED  # not a consumed queue
    bad = runner.invoke(cli, ["worker"], env={**env, "CONVEYOR_WORKER_CONCURRENCY": "lots"})
    assert bad.exit_code == 2 and "concurrency" in bad.output.lower()
    app.close_sync()
