"""Seed 000 interop, inbound: a seed-000 ``Task`` document becomes a job.

Conveyor renders jobs as seed-000 ``Task``/``TaskExecutionResult`` (``--seed000`` in the CLI,
``app.inspect.as_seed000_task``); this module reads a ``Task`` document back, validated
against the shipped JSON Schema (``conveyor/schemas/task.json``, needs ``jsonschema``:
``pip install 'conveyor[seed000]'``). The mapping (``docs/seed000.md`` has both directions):

======================  ==============================================================
seed 000                Conveyor
======================  ==============================================================
``type``                the task: its exact name, else the one task whose last dotted
                        segment is ``type`` (``send_email`` -> ``app.emails.send_email``)
``payload``             ``{"args": [...], "kwargs": {...}}`` as rendered; another object
                        -> keyword arguments; a list -> positional; anything else -> one
                        positional argument
``queue``               the queue
``priority``            the alias (``critical`` 20 ... ``background`` -20), or the exact
                        integer in ``metadata.priorityValue``
``retryPolicy``         ``maxRetries + 1`` -> ``max_attempts`` (backoff stays the task's;
                        the document's policy is kept in ``metadata.seed000RetryPolicy``)
``timeoutMs``           ``timeout``
``scheduledAt``         ``run_at`` (ISO 8601; a time without zone is refused)
``metadata``            metadata (``traceId`` -> ``trace_id``)
``id``                  idempotency key ``seed000:<id>``: the same document enqueued twice
                        is one job
``attempts``/``status`` ignored (a new job starts at attempt 0)
======================  ==============================================================
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

from conveyor.core.options import EnqueueOptions
from conveyor.core.task import JobSpec, Task
from conveyor.errors import InvalidArgumentsError, MissingDependencyError


@dataclass(frozen=True, slots=True)
class Seed000Call:
    """A seed-000 ``Task`` document resolved to a call of one of the app's tasks."""

    task: Task[Any, Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: EnqueueOptions

    def spec(self) -> JobSpec[Any]:
        self.task.check_arguments(self.args, self.kwargs)
        return JobSpec(self.task, self.args, dict(self.kwargs), self.options)


def _schema() -> dict[str, Any]:
    text = resources.files("conveyor.schemas").joinpath("task.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def validate_document(document: Any) -> None:
    """Raise :class:`InvalidArgumentsError` naming the first problem when ``document`` is not
    a valid seed-000 ``Task``."""
    try:
        import jsonschema
    except ImportError:
        raise MissingDependencyError("jsonschema", "seed000") from None
    validator = jsonschema.Draft202012Validator(
        _schema(), format_checker=jsonschema.FormatChecker()
    )
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(document)"
        raise InvalidArgumentsError(f"not a seed-000 Task: {where}: {first.message}")


def _find_task(tasks: dict[str, Task[Any, Any]], kind: str) -> Task[Any, Any]:
    if kind in tasks:
        return tasks[kind]
    matches = [t for name, t in tasks.items() if name.rsplit(".", 1)[-1] == kind]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(sorted(tasks)) or "(none)"
    if matches:
        names = ", ".join(t.name for t in matches)
        raise InvalidArgumentsError(f"seed-000 type {kind!r} is ambiguous: {names}")
    raise InvalidArgumentsError(f"seed-000 type {kind!r} names no task; known tasks: {known}")


def _call(payload: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(payload, dict):
        if payload and set(payload) <= {"args", "kwargs"}:
            args = payload.get("args") or []
            kwargs = payload.get("kwargs") or {}
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                raise InvalidArgumentsError(
                    "seed-000 payload: 'args' must be a list and 'kwargs' an object"
                )
            return tuple(args), dict(kwargs)
        return (), dict(payload)
    if isinstance(payload, list):
        return tuple(payload), {}
    return (payload,), {}


def _run_at(value: str) -> datetime:
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgumentsError(f"seed-000 scheduledAt {value!r} is not ISO 8601") from None
    if when.tzinfo is None:
        raise InvalidArgumentsError(
            f"seed-000 scheduledAt {value!r} has no time zone; add 'Z' or an offset"
        )
    return when


def from_document(tasks: dict[str, Task[Any, Any]], document: Any) -> Seed000Call:
    """Validate a seed-000 ``Task`` document and resolve it to a call (see the module
    docstring for the mapping). Raises :class:`InvalidArgumentsError` naming the problem."""
    validate_document(document)
    task = _find_task(tasks, document["type"])
    args, kwargs = _call(document["payload"])
    metadata = dict(document.get("metadata") or {})
    priority: int | str = document["priority"]
    exact = metadata.pop("priorityValue", None)
    if isinstance(exact, int) and not isinstance(exact, bool):
        priority = exact
    trace_id = metadata.pop("traceId", None)
    policy = document.get("retryPolicy")
    if policy is not None:
        metadata["seed000RetryPolicy"] = policy
    timeout_ms = document.get("timeoutMs")
    options = EnqueueOptions.build(
        queue=document["queue"],
        priority=priority,
        max_attempts=None if policy is None else int(policy["maxRetries"]) + 1,
        timeout=timeout_ms / 1000.0 if timeout_ms else None,
        run_at=None if "scheduledAt" not in document else _run_at(document["scheduledAt"]),
        trace_id=trace_id if isinstance(trace_id, str) and trace_id else None,
        idempotency_key=f"seed000:{document['id']}",
        metadata=metadata,
    )
    return Seed000Call(task, args, kwargs, options)
