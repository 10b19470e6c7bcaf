"""Small promises a new user meets in the first hour: clear errors, honest output, exit statuses.

CLI commands run in-process through click's runner (the code path is the console script's);
the one-line ``error:`` of ``main()`` runs in a real subprocess.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from conveyor import (
    Conveyor,
    InvalidArgumentsError,
    JobState,
    RetryPolicy,
    SerializationError,
    current_job,
)
from conveyor.cli.main import cli
from conveyor.cli.worker_cmd import _TextFormatter
from conveyor.testing import memory_app, run_until_idle

REPO = Path(__file__).resolve().parents[2]


def _conveyor(*args: str, prelude: str = "") -> subprocess.CompletedProcess[str]:
    code = (
        f"import sys\n{prelude}\nfrom conveyor.cli.main import main\n"
        f"sys.argv = ['conveyor', *{list(args)!r}]\nmain()"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )


@pytest.mark.parametrize(
    ("args", "prelude", "needle"),
    [
        (("stats", "--url", "foo://x"), "", "unsupported backend URL 'foo://x'"),
        # A missing extra: the import fails as it would without `pip install 'conveyor[redis]'`.
        (
            ("stats", "--url", "redis://127.0.0.1:1/0"),
            "sys.modules['redis'] = None",
            "pip install 'conveyor[redis]'",
        ),
        (
            ("stats", "--url", "postgresql://u@127.0.0.1:1/db"),
            "sys.modules['psycopg'] = None",
            "pip install 'conveyor[postgres]'",
        ),
    ],
    ids=["unknown-scheme", "no-redis-extra", "no-postgres-extra"],
)
def test_configuration_errors_are_one_line_not_a_traceback(
    args: tuple[str, ...], prelude: str, needle: str
) -> None:
    done = _conveyor(*args, prelude=prelude)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ["), done.stderr
    assert needle in lines[0]


def test_invalid_option_values_are_named_for_what_they_are() -> None:
    app = memory_app()

    @app.task
    def send(to: str) -> None: ...

    with pytest.raises(InvalidArgumentsError, match=r"^unknown enqueue option: bogus \(known: "):
        send.options(bogus=1)
    with pytest.raises(InvalidArgumentsError, match=r"^unknown enqueue options: a, b "):
        send.options(a=1, b=2)
    with pytest.raises(InvalidArgumentsError, match=r"^priority must be an int or a name"):
        send.options(priority=[1])
    with pytest.raises(InvalidArgumentsError, match=r"^delay: expected a duration"):
        send.options(delay=object())
    with pytest.raises(InvalidArgumentsError, match=r"^max_attempts must be an integer"):
        send.options(queue="q").options(max_attempts="x")


def test_a_serialization_error_names_the_argument() -> None:
    app = memory_app()

    @app.task
    def send(to: list[str], *, meta: dict[str, object]) -> None: ...

    with pytest.raises(SerializationError, match=r"argument 'to'\[1\] is a set"):
        send.enqueue_sync(["a", {"b"}], meta={})  # type: ignore[list-item]
    with pytest.raises(SerializationError, match=r"argument 'meta'\['x'\]\[0\] is a object"):
        send.enqueue_sync([], meta={"x": [object()]})
    with pytest.raises(SerializationError) as caught:
        send.enqueue_sync([], meta={"x": 1j})
    assert "value[" not in str(caught.value)


def _sqlite_app_module(tmp_path: Path) -> str:
    (tmp_path / "edge_app.py").write_text(
        "from conveyor import Conveyor\n"
        f"app = Conveyor('sqlite:///{tmp_path}/edges.db')\n"
        "@app.task\n"
        "def add(a: int, b: int) -> int:\n"
        "    return a + b\n"
        "app.schedule('tick', add, every='1h', args=(1, 2))\n"
    )
    sys.modules.pop("edge_app", None)  # an earlier test's module points at its own file
    return "edge_app:app"


def test_schedule_commands_report_an_unknown_name_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    app_path = _sqlite_app_module(tmp_path)
    runner = CliRunner()
    for verb in ("pause", "resume", "trigger", "remove", "history"):
        done = runner.invoke(cli, ["schedules", verb, "nosuch", "--app", app_path])
        assert done.exit_code == 3, done.output
        assert done.output.count("error:") == 1, done.output
        assert "no schedule named 'nosuch'" in done.output and "no job" not in done.output
    done = runner.invoke(cli, ["schedules", "update", "nosuch", "--every", "5m", "--app", app_path])
    assert done.exit_code == 3 and done.output.count("error:") == 1, done.output


def test_schedules_update_takes_durations_as_written_everywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    app_path = _sqlite_app_module(tmp_path)
    runner = CliRunner()
    done = runner.invoke(
        cli, ["schedules", "update", "tick", "--every", "10s", "--json", "--app", app_path]
    )
    assert done.exit_code == 0, done.output
    assert '"every": 10.0' in done.output
    bad = runner.invoke(cli, ["schedules", "update", "tick", "--every", "soon", "--app", app_path])
    assert bad.exit_code == 2 and "--every" in bad.output


def test_enqueue_wait_exits_7_while_the_job_still_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    app_path = _sqlite_app_module(tmp_path)
    done = CliRunner().invoke(
        cli,
        [
            "enqueue",
            "edge_app.add",
            "--args",
            "[1, 2]",
            "--wait",
            "0.2",
            "--json",
            "--app",
            app_path,
        ],
    )
    assert done.exit_code == 7, done.output
    assert '"state": "queued"' in done.output


async def test_a_requested_retry_is_a_retry_not_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = memory_app()

    @app.task(retry=RetryPolicy.build(3, backoff="fixed", delay=0, jitter=False))
    async def poll() -> str:
        if current_job().attempt == 1:
            raise current_job().retry(delay=0, reason="not ready yet")
        return "done"

    handle = await poll.enqueue()
    with caplog.at_level(logging.INFO, logger="conveyor.job"):
        worker = await run_until_idle(app)
    assert await handle.result(1) == "done"
    stats = worker.stats
    assert (stats.processed, stats.succeeded, stats.failed, stats.retried) == (2, 1, 0, 1)
    assert stats.tasks[poll.name].failed == 0 and stats.tasks[poll.name].retried == 1
    lines = [r for r in caplog.records if r.name == "conveyor.job"]
    assert [r.levelno for r in lines] == [logging.INFO]
    assert "asked to be retried" in lines[0].getMessage() and lines[0].exc_info is None
    [stored] = (await handle.info()).record.errors
    assert stored.code == "retry" and stored.traceback is None


async def test_a_completed_job_shows_no_error_from_an_earlier_attempt() -> None:
    app = memory_app()

    @app.task(retry=RetryPolicy.build(2, delay=0, jitter=False))
    async def flaky() -> int:
        if current_job().attempt == 1:
            raise ConnectionError("first try fails")
        return 1

    handle = await flaky.enqueue()
    await run_until_idle(app)
    info = await handle.info()
    assert info.state is JobState.COMPLETED
    assert info.error is None and info.to_dict()["error"] is None
    assert [e.message for e in info.record.errors] == ["first try fails"]  # history kept
    assert "attempt_failed" in [e.event for e in info.timeline()]


def test_log_durations_read_like_durations() -> None:
    formatter = _TextFormatter("%(message)s")
    record = logging.LogRecord("conveyor.job", logging.INFO, __file__, 1, "done", None, None)
    record.duration = 5.08e-05
    record.job_id = "j"
    assert formatter.format(record) == "done [job_id=j duration=51µs]"
    record.duration = 2.5
    assert "duration=2.50s" in formatter.format(record)


def test_large_values_are_cut_short_in_human_output_and_listings_skip_payloads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    app_path = _sqlite_app_module(tmp_path)
    app = Conveyor(f"sqlite:///{tmp_path}/edges.db")

    @app.task(name="edge_app.add")
    def add(a: int, b: int) -> int: ...

    with app:
        big = add.enqueue_sync("x" * 10_000_000, 1)  # type: ignore[arg-type]
        small = add.enqueue_sync("y" * 5_000, 2)  # type: ignore[arg-type]
    runner = CliRunner()
    shown = runner.invoke(cli, ["jobs", "show", big.id, "--app", app_path])
    assert shown.exit_code == 0, shown.output
    assert len(shown.output) < 20_000 and "--full" in shown.output  # the way to see it all
    assert "9,998,0" in shown.output.replace("\n", "")  # how much was left out
    whole = runner.invoke(cli, ["jobs", "show", small.id, "--full", "--app", app_path])
    assert whole.output.count("y") >= 5_000
    cut = runner.invoke(cli, ["jobs", "show", small.id, "--app", app_path])
    assert cut.output.count("y") < 5_000
    listed = runner.invoke(cli, ["jobs", "list", "--json", "--app", app_path])
    assert listed.exit_code == 0 and len(listed.output) < 20_000  # no payload was loaded
    assert '"summary": true' in listed.output
