"""Seed-000 interop, inbound: a seed-000 Task document (validated against the shipped schema)
becomes a job, from Python and from ``conveyor enqueue --seed000``; rendering and reading back
agree."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner

from conveyor import InvalidArgumentsError, JobState
from conveyor.cli.main import cli
from conveyor.testing import memory_app, run_until_idle
from tests.unit import seed000_app

DOC: dict[str, Any] = {
    "id": "task-123",
    "type": "send_email",
    "payload": {"to": "ada@example.com", "subject": "welcome"},
    "queue": "notifications",
    "priority": "high",
    "retryPolicy": {
        "maxRetries": 2,
        "backoffStrategy": "exponential",
        "initialDelayMs": 1000,
        "maxDelayMs": 60000,
        "backoffMultiplier": 2,
    },
    "timeoutMs": 30000,
    "scheduledAt": "2030-01-01T09:00:00Z",
    "attempts": 0,
    "status": "pending",
    "metadata": {"tenant": "acme", "traceId": "abc123"},
}


async def test_a_document_maps_onto_a_job() -> None:
    app = memory_app()
    app.task(name="notifications.send_email", queue="x")(seed000_app.send_email.fn)
    handle = await app.enqueue_seed000(DOC)
    info = await handle.info()
    r = info.record
    assert r.task == "notifications.send_email" and r.queue == "notifications"
    assert info.kwargs == {"to": "ada@example.com", "subject": "welcome"} and info.args == []
    assert r.priority == 10 and r.max_attempts == 3 and r.timeout == 30.0
    assert r.run_at == datetime(2030, 1, 1, 9, tzinfo=UTC).timestamp()
    assert r.state is JobState.SCHEDULED and r.trace_id == "abc123"
    assert r.metadata["tenant"] == "acme" and r.metadata["seed000RetryPolicy"]["maxRetries"] == 2
    assert r.idempotency_key == "seed000:task-123"
    again = await app.enqueue_seed000(DOC)
    assert again.id == handle.id and not again.created  # the same document is one job


async def test_rendering_and_reading_back_agree() -> None:
    source, target = memory_app(), memory_app()
    for app in (source, target):
        app.task(name="reports.build", queue="reports", timeout=5)(seed000_app.build.fn)
    handle = await source.tasks["reports.build"].options(priority=7).enqueue(42)
    rendered = source.inspect.as_seed000_task(await handle.info())
    copy = await target.enqueue_seed000(json.loads(json.dumps(rendered)))
    a, b = (await handle.info()), (await copy.info())
    assert (b.record.task, b.record.queue) == ("reports.build", "reports")
    assert (b.args, b.kwargs) == ([42], {})
    assert b.record.priority == a.record.priority == 7 and b.record.timeout == 5.0
    await run_until_idle(target, queues=("reports",))
    assert (await copy.info()).state is JobState.COMPLETED


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"priority": 5}, "priority: 5 is not one of"),
        ({"type": "nope"}, "type 'nope' names no task"),
        ({"scheduledAt": "2030-01-01T09:00:00"}, "has no time zone"),
        ({"payload": {"to": "a", "bogus": 1}}, "unexpected keyword argument 'bogus'"),
    ],
)
async def test_bad_documents_are_refused_naming_the_problem(
    change: dict[str, Any], message: str
) -> None:
    app = memory_app()
    app.task(name="notifications.send_email")(seed000_app.send_email.fn)
    with pytest.raises(InvalidArgumentsError, match=message):
        await app.enqueue_seed000({**DOC, **change})
    missing = {k: v for k, v in DOC.items() if k != "queue"}
    with pytest.raises(InvalidArgumentsError, match="'queue' is a required property"):
        await app.enqueue_seed000(missing)
    assert await (await app.backend()).count_jobs() == []


def test_the_cli_reads_documents_from_stdin() -> None:
    runner = CliRunner()
    docs = [DOC, {**DOC, "id": "task-124", "type": "reports.build", "payload": [7],
                  "queue": "default", "priority": "low"}]
    args = ["enqueue", "--seed000", "-", "--app", "tests.unit.seed000_app:app", "--json"]
    result = runner.invoke(cli, args, input=json.dumps(docs))
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert [row["task"] for row in out] == ["notifications.send_email", "reports.build"]
    assert [row["seed000Id"] for row in out] == ["task-123", "task-124"]
    bad = runner.invoke(cli, args, input='{"id": "x"}')
    assert bad.exit_code == 2 and "required property" in bad.output
    assert "Traceback" not in bad.output


def test_the_schema_is_the_one_the_renderer_is_checked_against() -> None:
    from importlib import resources

    schema = json.loads(resources.files("conveyor.schemas").joinpath("task.json").read_text())
    jsonschema.validate(DOC, schema)
