"""The ``conveyor`` command line against a real SQLite file, as an operator uses it.

Every command runs as a subprocess with stdin not a TTY. Checked: exit statuses (0 ok, 2 usage,
3 not found, 4 wrong state, 5 refused confirmation), ``--json`` shapes (seed-000 ones against
the JSON Schemas the package ships), and that bad input changes nothing in the store.
"""

from __future__ import annotations

import json
import signal
import time
from importlib import resources
from typing import Any

import jsonschema
import pytest

from conveyor.domain.job import JobFilter
from conveyor.domain.states import JobState

from .conftest import MakeStore, Store, wait_until

pytestmark = pytest.mark.acceptance

JOB_KEYS = {
    "id", "task", "queue", "state", "priority", "args", "kwargs", "result", "progress",
    "attempts", "max_attempts", "stalls", "run_at", "created_at", "started_at", "finished_at",
    "duration", "timeout", "expires_at", "idempotency_key", "trace_id", "metadata",
    "lease_owner", "lease_until", "error", "errors", "logs", "dead_letter_queue",
    "cancel_requested", "timeline", "decode_error",
}  # fmt: skip
ERROR_KEYS = {"code", "type", "message", "traceback", "attempt", "at"}
EXIT_USAGE, EXIT_NOT_FOUND, EXIT_INVALID_STATE, EXIT_ABORTED = 2, 3, 4, 5


def schema(name: str) -> jsonschema.Draft202012Validator:
    text = resources.files("conveyor").joinpath("schemas", f"{name}.json").read_text()
    return jsonschema.Draft202012Validator(json.loads(text))


async def snapshot(store: Store) -> list[tuple[Any, ...]]:
    """Every job's id, state, attempts and run-at: what bad input must not change."""
    backend = await store.app.backend()
    records = await backend.list_jobs(JobFilter(), limit=10_000)
    return sorted((r.id, r.state.value, r.attempts, r.run_at) for r in records)


def flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


def enqueue(store: Store, task: str, *options: str) -> str:
    out = store.cli_json("enqueue", task, *options)
    assert out["task"] == task and out["created"] is True
    return str(out["id"])


async def test_cli_enqueue_list_show_cancel_retry(make_store: MakeStore) -> None:
    store = await make_store("sqlite")
    added = enqueue(store, "add", "--args", "[2, 3]", "--trace-id", "tr-1")
    later = enqueue(store, "work", "--args", "[1]", "--delay", "1h", "--priority", "high")
    urgent = enqueue(store, "work", "--kwargs", '{"ms": 1}', "--queue", "billing")
    before = await snapshot(store)
    assert len(before) == 3

    # Bad input: a clear error, a non-zero status, and nothing enqueued.
    bad: list[tuple[tuple[str, ...], str]] = [
        (("enqueue", "no_such_task"), "no task named 'no_such_task'"),
        (("enqueue", "add", "--args", "[1, "), "not valid JSON"),
        (("enqueue", "add", "--args", '{"a": 1}'), "--args must be a JSON list"),
        (("enqueue", "add", "--priority", "urgentest", "--args", "[1, 2]"), "urgentest"),
        (("enqueue", "add", "--delay", "-5s", "--args", "[1, 2]"), "-5s"),
        (("enqueue", "add", "--args", "[1]"), "missing a required argument: 'b'"),
    ]
    for (args, message), done in zip(bad, store.cli_many(*[args for args, _ in bad]), strict=True):
        assert done.returncode == EXIT_USAGE, (args, done.returncode, done.stderr)
        assert message in flat(done.stderr), (args, done.stderr)
    assert await snapshot(store) == before

    listed, scheduled, billing, adds, page, rest, seed_list, shown, shown_later, seed = (
        store.cli_json_many(
            ("jobs", "list"),
            ("jobs", "list", "--state", "scheduled"),
            ("jobs", "list", "--queue", "billing"),
            ("jobs", "list", "--task", "add"),
            ("jobs", "list", "--limit", "2"),
            ("jobs", "list", "--limit", "2", "--offset", "2"),
            ("jobs", "list", "--seed000"),
            ("jobs", "show", added),
            ("jobs", "show", later),
            ("jobs", "show", added, "--seed000"),
        )
    )
    assert {j["id"] for j in listed} == {added, later, urgent}
    assert all(set(j) == JOB_KEYS for j in listed), listed[0].keys()
    assert [j["id"] for j in scheduled] == [later]
    assert [j["id"] for j in billing] == [urgent]
    assert [j["id"] for j in adds] == [added]
    assert [j["id"] for j in page + rest] == sorted([added, later, urgent], reverse=True)
    task_schema = schema("task")
    for item in seed_list:
        task_schema.validate(item)
    assert set(shown) == JOB_KEYS
    assert shown["args"] == [2, 3] and shown["state"] == "queued" and shown["trace_id"] == "tr-1"
    assert shown_later["priority"] > 0 and shown_later["state"] == "scheduled"
    task_schema.validate(seed["task"])
    schema("task_execution_result").validate(seed["result"])
    missing = store.cli("jobs", "show", "0" * 32)
    assert missing.returncode == EXIT_NOT_FOUND

    # Cancel: a waiting job at once; an unknown id is 3 and changes nothing.
    assert store.cli_json("jobs", "cancel", later) == [{"id": later, "outcome": "cancelled"}]
    assert (await store.record(later)).state is JobState.CANCELLED
    before = await snapshot(store)
    unknown, again, queued, nowhere = store.cli_many(
        ("jobs", "cancel", "0" * 32),
        ("jobs", "cancel", later),
        ("jobs", "retry", added),  # still waiting: retrying it makes no sense
        ("jobs", "retry", "0" * 32),
    )
    assert unknown.returncode == EXIT_NOT_FOUND and "not_found" in unknown.stdout
    assert again.returncode == EXIT_INVALID_STATE
    assert queued.returncode == EXIT_INVALID_STATE and "invalid_state" in queued.stdout
    assert nowhere.returncode == EXIT_NOT_FOUND
    assert await snapshot(store) == before

    # Run what is waiting, then act on finished jobs.
    burst = store.cli("worker", "tests.acceptance.apps:from_env", "--burst", with_app=False)
    assert burst.returncode == 0, burst.stderr
    assert store.cli_json("jobs", "show", added)["result"] == 5
    finished, done_retry = store.cli_many(("jobs", "cancel", added), ("jobs", "retry", added))
    assert finished.returncode == EXIT_INVALID_STATE and "not_cancellable" in finished.stdout
    assert done_retry.returncode == EXIT_INVALID_STATE
    assert (await store.record(added)).state is JobState.COMPLETED

    # A cancelled job can be retried: it is queued again, at once.
    assert store.cli_json("jobs", "retry", later) == [{"id": later, "outcome": "retried"}]
    rec = await store.record(later)
    assert rec.state is JobState.QUEUED and rec.run_at <= time.time()


async def test_cli_enqueue_with_misfit_arguments_is_a_usage_error(make_store: MakeStore) -> None:
    store = await make_store("sqlite")
    done = store.cli("enqueue", "add", "--args", "[1]")
    assert done.returncode == EXIT_USAGE, done.stderr
    assert "[invalid_arguments]" in done.stderr
    assert "missing a required argument" in flat(done.stderr)
    assert await snapshot(store) == []


async def test_cli_show_unknown_job_with_json_keeps_stdout_clean(make_store: MakeStore) -> None:
    store = await make_store("sqlite")
    done = store.cli("jobs", "show", "0" * 32, "--json")
    assert done.returncode == EXIT_NOT_FOUND
    assert done.stdout.strip() == "" and "no job with id" in done.stderr


async def test_cli_dead_letters(make_store: MakeStore) -> None:
    store = await make_store("sqlite")
    boom = enqueue(store, "boom", "--args", '["kaput"]')
    billing = enqueue(store, "billing_boom")
    payments = enqueue(store, "payments_boom")
    unknown = await store.insert_raw("gone.task", b'{"a": [], "k": {}}')
    corrupt = await store.insert_raw("work", b"\x00\x01 definitely not a payload")
    fine = enqueue(store, "work", "--args", "[1]")
    burst = store.cli("worker", "tests.acceptance.apps:from_env", "--burst", with_app=False)
    assert burst.returncode == 0, burst.stderr
    dead = {boom, billing, payments, unknown, corrupt}

    def check(items: list[dict[str, Any]]) -> set[str]:
        for item in items:
            assert set(item) == JOB_KEYS and set(item["error"]) == ERROR_KEYS
            assert item["state"] == "failed"
        return {item["id"] for item in items}

    def dlq_ids(*filters: str) -> set[str]:
        return check(store.cli_json("dlq", "list", *filters))

    filters: list[tuple[tuple[str, ...], set[str]]] = [
        ((), dead),
        (("--task", "boom"), {boom}),
        (("--queue", "billing"), {billing}),
        (("--code", "unknown_task"), {unknown}),
        (("--code", "invalid_payload"), {corrupt}),
        (("--code", "error"), {boom, billing, payments}),
        (("--queue", "payments"), {payments}),
        (("--queue", "default", "--code", "error"), {boom}),
        (("--older-than", "1h"), set()),
    ]
    found = store.cli_json_many(*[("dlq", "list", *f) for f, _ in filters])
    for (flt, expected), items in zip(filters, found, strict=True):
        assert check(items) == expected, flt
    newest = max((r.finished_at or 0.0) for r in (await store.records(dead)).values())
    await wait_until(lambda: time.time() - newest > 1.0, 5, message="the failures to age")
    assert dlq_ids("--older-than", "1s") == dead
    routed = store.cli_json("dlq", "list", "--task", "payments_boom")[0]
    assert routed["queue"] == "payments" and routed["dead_letter_queue"] == "payments-dead"
    table = store.cli("dlq", "list", "--task", "payments_boom", with_app=True)
    assert "payments-dead" in table.stdout  # the table shows where it was routed
    item = store.cli_json("dlq", "list", "--task", "boom")[0]
    assert item["attempts"] == 3 and item["error"]["message"] == "kaput"
    assert "RuntimeError: kaput" in item["error"]["traceback"]
    assert [e["attempt"] for e in item["errors"]] == [1, 2, 3]

    # Destructive operations refuse without --yes when nobody can answer: 5, nothing changes.
    before = await snapshot(store)
    refusals = [("dlq", "purge"), ("dlq", "purge", "--task", "boom"), ("dlq", "retry-all")]
    *refused, nowhere, alive = store.cli_many(
        *refusals, ("dlq", "retry", "0" * 32), ("dlq", "retry", fine)
    )
    for args, done in zip(refusals, refused, strict=True):
        assert done.returncode == EXIT_ABORTED, (args, done.stdout, done.stderr)
        assert "without --yes" in flat(done.stdout + done.stderr)
    assert nowhere.returncode == EXIT_NOT_FOUND
    assert alive.returncode == EXIT_INVALID_STATE
    assert await snapshot(store) == before

    # Retry one; retry all of one code; purge by filter; purge the rest.
    assert store.cli_json("dlq", "retry", billing) == [{"id": billing, "outcome": "retried"}]
    rec = await store.record(billing)
    assert rec.state is JobState.QUEUED and rec.attempts == 1 and rec.error is not None
    out = store.cli_json("dlq", "retry-all", "--code", "unknown_task", "--reset-attempts", "--yes")
    assert out == {"retried": 1}
    rec = await store.record(unknown)
    assert rec.state is JobState.QUEUED and rec.attempts == 0
    assert dlq_ids() == {boom, payments, corrupt}
    assert store.cli_json("dlq", "purge", "--task", "boom", "--yes") == {"purged": 1}
    assert store.cli("jobs", "show", boom).returncode == EXIT_NOT_FOUND
    assert store.cli_json("dlq", "purge", "--yes") == {"purged": 2}
    assert dlq_ids() == set()
    # Purging never touches jobs outside the dead-letter set.
    remaining = {row[0]: row[1] for row in await snapshot(store)}
    assert remaining == {billing: "queued", unknown: "queued", fine: "completed"}


async def test_cli_stats_queues_and_live_workers(make_store: MakeStore) -> None:
    store = await make_store("sqlite")
    made = store.cli_json_many(
        *[("enqueue", "work", "--args", f"[{ms}]") for ms in (1, 2, 3)],
        ("enqueue", "billing_boom"),
        ("enqueue", "sleeper", "--args", "[30]"),
    )
    assert all(m["created"] for m in made)
    worker = store.start_worker(concurrency=4, grace=0.5)
    await wait_until(lambda: len(store.ledger.starts()) == 5, 30, message="all jobs to start")

    async def settled() -> bool:
        return await store.count(JobState.COMPLETED) == 3 and await store.count(JobState.FAILED)

    await wait_until(settled, 15, message="the short jobs to finish")

    async def registry_caught_up() -> bool:
        found = await store.app.inspect.workers()
        return any(w.pid == worker.pid and w.stats.get("processed") == 4 for w in found)

    # The registry is refreshed with each heartbeat; wait for one after the jobs finished.
    await wait_until(registry_caught_up, 15, interval=0.2, message="worker stats")
    (entry,) = store.cli_json("workers")
    assert entry["pid"] == worker.pid and entry["totalProcessed"] == 4
    schema("worker_stats").validate(entry)
    assert entry["succeeded"] == 3 and entry["failed"] == 1 and entry["active"] == 1
    assert entry["workerName"].split(":")[1] == str(worker.pid)
    assert entry["concurrency"] == 4 and "default" in entry["queueNames"]
    assert set(entry["queues"]) == {"default", "billing"}

    # With a worker running, --wait returns the result; a repeated key returns the same job.
    waited = store.cli_json("enqueue", "add", "--args", "[20, 22]", "--wait", "20", "--key", "k1")
    assert waited["result"] == 42 and waited["state"] == "completed" and waited["created"]
    again = store.cli_json("enqueue", "add", "--args", "[1, 1]", "--key", "k1")
    assert again["id"] == waited["id"] and again["created"] is False
    stats, queues, shown = store.cli_json_many(
        ("stats",), ("queues",), ("jobs", "show", again["id"])
    )
    assert shown["idempotency_key"] == "k1" and shown["args"] == [20, 22]
    assert set(stats) == {"queues", "tasks", "total", "metrics", "bridges"}
    assert stats["bridges"] == []
    assert stats["total"]["completed"] == 4 and stats["total"]["failed"] == 1
    assert stats["total"]["running"] == 1
    assert stats["queues"]["billing"]["failed"] == 1
    assert stats["tasks"]["work"]["completed"] == 3 and stats["tasks"]["sleeper"]["running"] == 1
    work = stats["metrics"]["work"]
    assert work["succeeded"] == 3 and work["sampled"] == 3
    assert stats["metrics"]["add"]["sampled"] == 1
    assert work["p50"] is not None and work["p50"] <= work["p95"] <= work["p99"]
    assert stats["metrics"]["billing_boom"]["dead"] == 1

    assert [q["name"] for q in queues] == ["default", "billing", "payments"]
    assert queues[2]["deadLetterQueue"] == "payments-dead"
    validator = schema("queue_config")
    for q in queues:
        validator.validate(q)

    worker.signal(signal.SIGTERM)
    assert await worker.wait_exit(10) == 0, worker.log()
    assert store.cli_json("workers") == []  # a clean stop unregisters


async def test_cli_dlq_filters_by_the_dead_letter_queue_it_shows(make_store: MakeStore) -> None:
    store = await make_store("sqlite")
    payments = enqueue(store, "payments_boom")
    burst = store.cli("worker", "tests.acceptance.apps:from_env", "--burst", with_app=False)
    assert burst.returncode == 0, burst.stderr
    assert "payments-dead" in store.cli("dlq", "list").stdout
    found = store.cli_json("dlq", "list", "--queue", "payments-dead")
    assert [j["id"] for j in found] == [payments]
