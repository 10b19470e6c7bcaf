"""Hostile input, read side: hand-corrupted records never take an operator command down.

Next to ``test_corrupt_records.py`` (what a *worker* does with a corrupt record), this suite
corrupts stored records directly in the store — one field per job, as a person with ``psql``,
``sqlite3`` or ``redis-cli`` might — then runs every read path over the damage:

* the inspection API: ``app.inspect.job/jobs/counts/task_metrics/damaged/workers``,
  ``app.dead_letters.list``, handles, the seed-000 renderers and ``JobInfo.to_dict``;
* the CLI: ``stats``, ``jobs list``, ``jobs show``, ``dlq list``, ``workers``, ``queues``, in
  human and ``--json`` form (in-process through click's runner: the console script's code).

What must hold, for every case: no call raises and no command shows a traceback or exits
non-zero; the healthy jobs next to the damaged ones are shown as usual; every command that
shows the damaged record marks it, by its id, with the field that is wrong (``jobs show``
always; listings when the field is one a listing reads).
"""

from __future__ import annotations

import asyncio
import json
import sys
import types
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from conveyor import Conveyor
from conveyor.backends.memory import MemoryBackend
from conveyor.cli.main import cli
from conveyor.domain.job import ErrorInfo, JobFilter, LogEntry
from conveyor.domain.states import JobState

from . import rawstore
from .conftest import MakeRig

GARBAGE = b"\xff\xfe\x00{not json"

#: Fields a listing (a summary read) shows: damage to these is marked in listings too.
LISTED = {"state", "task", "metadata", "error", "attempts", "run_at", "priority", "created_at"}


@dataclass(frozen=True)
class Case:
    """One corruption: the job's starting state, the field, the value written there (``DROP``
    deletes it) and the field name the damage report must carry."""

    state: str  # "completed", "failed" or "queued"
    field: str
    value: Any
    names: str  # the field the damage mentions


DROP = object()

CASES: dict[str, list[Case]] = {
    "sqlite": [
        Case("failed", "errors", "garbage\n", "errors"),
        Case("failed", "error", "{bad", "error"),
        Case("queued", "metadata", "[1, 2]", "metadata"),
        Case("queued", "state", "bogus", "state"),
        Case("completed", "state", "bogus", "state"),
        Case("queued", "payload", GARBAGE, "payload"),
        Case("completed", "result", GARBAGE, "result"),
        Case("completed", "logs", "garbage\n", "logs"),
        Case("queued", "attempts", "abc", "attempts"),
        Case("queued", "run_at", "soon", "run_at"),
        Case("queued", "parents", "nope", "parents"),
    ],
    "postgres": [
        Case("queued", "metadata", "[1, 2]", "metadata"),
        Case("failed", "errors", "42", "errors"),
        Case("failed", "errors", '{"not": "a list"}', "errors"),
        Case("failed", "error", '"text"', "error"),
        Case("completed", "error", "42", "error"),
        Case("queued", "payload", GARBAGE, "payload"),
        Case("completed", "result", GARBAGE, "result"),
    ],
    "redis": [
        Case("queued", "payload", DROP, "payload"),
        Case("completed", "ra", "x", "run_at"),
        Case("queued", "s", "bogus", "state"),
        Case("failed", "E", "bad", "errors"),
        Case("failed", "e", "{bad", "error"),
        Case("queued", "md", "[1, 2]", "metadata"),
        Case("queued", "a", "abc", "attempts"),
        Case("completed", "r", GARBAGE, "result"),
        Case("completed", "L", "bad", "logs"),
        Case("queued", "t", DROP, "task"),
    ],
}


async def _seed(app: Conveyor, states: list[str]) -> list[str]:
    """One job per entry, brought to that state through the store's own transitions."""
    work = app.tasks["work"]
    ids = [(await work.enqueue(7)).id for _ in states]
    backend = await app.backend()
    claimed = {c.id: c for c in await backend.claim("seed", ["default"], len(ids), 60.0)}
    for job_id, state in zip(ids, states, strict=True):
        c = claimed[job_id]
        if state == "completed":
            await backend.append_logs(job_id, [LogEntry(0.0, "info", "ran", 1)])
            assert await backend.complete(job_id, c.fence, b"7")
        elif state == "failed":
            err = ErrorInfo("error", "RuntimeError", "boom", "(the handler's stack)", 1, 1.0)
            assert await backend.fail(job_id, c.fence, err, retry_delay=None)
        else:
            assert await backend.release(job_id, c.fence)
    return ids


def _cli_module(app: Conveyor) -> str:
    """A module the CLI can load with ``--app`` that holds this very app (and its store)."""
    name = f"hostile_reads_{id(app)}"
    module = types.ModuleType(name)
    module.app = app  # type: ignore[attr-defined]
    sys.modules[name] = module
    return f"{name}:app"


def _invoke(app_path: str, *args: str) -> str:
    done = CliRunner().invoke(cli, [*args, "--app", app_path], catch_exceptions=True)
    shown = f"$ conveyor {' '.join(args)} -> {done.exit_code}\n{done.output}"
    assert done.exception is None or isinstance(done.exception, SystemExit), (
        shown + f"\n{done.exception!r}"
    )
    assert done.exit_code == 0, shown
    assert "Traceback (most recent call last)" not in done.output, shown
    return done.output


def _check_cli(
    app_path: str, damaged: dict[str, Case], healthy: list[str], *, by_state: bool = True
) -> None:
    """Every read command over the store; damaged records marked where they are shown.
    ``by_state``: the store finds jobs by their stored state (not Redis, whose state indexes a
    hand edit of the state field does not move), so ``stats`` counts and lists them."""
    for args in (("stats",), ("workers",), ("queues",), ("workers", "--json")):
        _invoke(app_path, *args)
    stats = json.loads(_invoke(app_path, "stats", "--json"))
    unknown = [i for i, c in damaged.items() if c.names == "state" and by_state]
    assert {d["id"] for d in stats["damaged"]} >= set(unknown)
    human_stats = _invoke(app_path, "stats")
    for job_id in unknown:
        assert f"damaged record {job_id}: state" in human_stats, human_stats

    listing = _invoke(app_path, "jobs", "list", "--limit", "500")
    as_json = json.loads(_invoke(app_path, "jobs", "list", "--limit", "500", "--json"))
    assert {j["id"] for j in as_json} >= set(healthy) | set(damaged)
    dead = _invoke(app_path, "dlq", "list", "--limit", "500")
    dead_json = json.loads(_invoke(app_path, "dlq", "list", "--limit", "500", "--json"))
    for job_id in healthy:
        assert job_id in listing
    for job_id, case in damaged.items():
        if case.names in LISTED:
            assert f"damaged record {job_id}: {case.names}" in listing, (case, listing)
            entry = next(j for j in as_json if j["id"] == job_id)
            assert any(d.startswith(case.names) for d in entry["damage"]), entry
            if case.state == "failed":
                assert f"damaged record {job_id}: {case.names}" in dead, (case, dead)
        if case.state == "failed":
            assert job_id in {j["id"] for j in dead_json}

        shown = _invoke(app_path, "jobs", "show", job_id)
        assert job_id in shown and "damaged" in shown and case.names in shown, (case, shown)
        full = json.loads(_invoke(app_path, "jobs", "show", job_id, "--json"))
        assert any(d.startswith(case.names) for d in full["damage"]), (case, full["damage"])
        json.loads(_invoke(app_path, "jobs", "show", job_id, "--json", "--seed000"))
    for job_id in healthy:
        assert "damaged" not in _invoke(app_path, "jobs", "show", job_id)


async def _check_api(
    app: Conveyor, damaged: dict[str, Case], healthy: list[str], *, by_state: bool = True
) -> None:
    inspect = app.inspect
    for job_id, case in damaged.items():
        info = await inspect.job(job_id)
        assert info is not None and info.id == job_id
        assert any(d.startswith(case.names) for d in info.damage), (case, info.damage)
        json.dumps(info.to_dict(), default=str)
        inspect.as_seed000_task(info)
        inspect.as_seed000_result(info)
        info.timeline()
        handle_info = await app.handle(job_id).info()
        assert handle_info.damage == info.damage
    for job_id in healthy:
        info = await inspect.job(job_id)
        assert info is not None and info.damage == ()
    for summary in (False, True):
        listed = {j.id: j for j in await inspect.jobs(limit=500, summary=summary)}
        assert set(listed) >= set(damaged) | set(healthy)
        for job_id, case in damaged.items():
            if case.names in LISTED:
                assert any(d.startswith(case.names) for d in listed[job_id].damage)
        await app.dead_letters.list(limit=500, summary=summary)
    counts = await inspect.counts()
    assert sum(counts.total.values()) >= len(damaged) + len(healthy)
    await inspect.task_metrics()
    await inspect.workers(include_stale=True)
    found = {j.id for j in await inspect.damaged()}
    for job_id, case in damaged.items():
        if case.names == "state" and by_state:
            assert job_id in found  # (see _check_cli for why not on Redis)


@pytest.mark.parametrize("kind", ["sqlite", "postgres", "redis"])
async def test_operator_reads_survive_corrupt_records(make_rig: MakeRig, kind: str) -> None:
    rig = await make_rig(kind)
    cases = CASES[kind]
    ids = await _seed(rig.app, [c.state for c in cases] + ["completed", "failed", "queued"])
    damaged = dict(zip(ids, cases, strict=False))
    healthy = ids[len(cases) :]
    for job_id, case in damaged.items():
        if case.value is DROP:
            await asyncio.to_thread(rawstore.drop, rig, job_id, case.field)
        else:
            await asyncio.to_thread(rawstore.corrupt, rig, job_id, case.field, case.value)
    await _check_api(rig.app, damaged, healthy, by_state=kind != "redis")
    await rig.app.close()
    app_path = _cli_module(rig.app)
    await asyncio.to_thread(_check_cli, app_path, damaged, healthy, by_state=kind != "redis")


async def test_operator_reads_survive_undecodable_values_in_memory() -> None:
    """The memory reference stores typed records, so corruption there can only be a value the
    core cannot decode (payload, result, progress): the core's read paths handle those."""
    app = Conveyor("memory://")

    @app.task(name="work")
    async def work(n: int) -> int:
        return n

    ids = await _seed(app, ["queued", "completed", "completed", "failed"])
    backend = await app.backend()
    assert isinstance(backend, MemoryBackend)
    store = backend.store
    corrupt = {
        ids[0]: ("payload", replace(store.jobs[ids[0]], payload=GARBAGE)),
        ids[1]: ("result", replace(store.jobs[ids[1]], result=GARBAGE)),
        ids[2]: ("progress", replace(store.jobs[ids[2]], progress=GARBAGE)),
    }
    for job_id, (_, record) in corrupt.items():
        store.jobs[job_id] = record
    states = {"payload": "queued", "result": "completed", "progress": "completed"}
    damaged = {
        job_id: Case(states[name], name, None, name) for job_id, (name, _) in corrupt.items()
    }
    await _check_api(app, damaged, [ids[3]])
    await app.close()
    await asyncio.to_thread(_check_cli, _cli_module(app), damaged, [ids[3]])
    assert store.jobs[ids[3]].state is JobState.FAILED
    assert await backend.list_jobs(JobFilter(ids=(ids[3],))) != []


def test_the_suite_covers_the_reported_cases() -> None:
    """The cases from the try-out that found these bugs (issue 13) are all here."""
    reported = {
        ("sqlite", "errors"),  # `dlq list` raised JSONDecodeError
        ("postgres", "metadata"),  # TypeError
        ("redis", "payload"),  # a deleted payload key: TypeError
        ("sqlite", "state"),  # 'bogus' broke `stats` and `jobs show`
        ("redis", "ra"),  # a non-numeric run-at broke `stats`
        ("postgres", "errors"),  # errors='42'::jsonb broke `stats`
    }
    have = {(kind, c.field) for kind, cases in CASES.items() for c in cases}
    assert reported <= have
    assert Path(__file__).name == "test_corrupt_reads.py"
