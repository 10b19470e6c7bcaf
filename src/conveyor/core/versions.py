"""Payload versions: a task's signature can change while old jobs still wait in the store.

Every job is stamped with its task's ``version`` when it is enqueued (``payload_version`` in
the job record). A worker runs a job according to the version it finds:

- **newer than the task's version** (a producer deployed before this worker): the job is
  handed back without counting an attempt and waits for a newer worker (``wait``);
- **older than** ``since`` (the oldest version the worker still migrates): dead-lettered with
  code ``version_unsupported``;
- **older than the version**: each migration from the job's version up is applied in order,
  then the arguments are validated; steps with no migration are skipped (a new optional
  parameter needs none);
- **equal**: run as is.

A migration takes the stored call ``(args, kwargs)`` of version ``n - 1`` and returns the
call of version ``n``::

    @app.task(version=3, migrate={2: add_locale, 3: rename_to})
    def send(to: str, locale: str = "en") -> None: ...

``app.inspect.versions(task)`` shows how many waiting jobs hold each version, so you know when
``since`` can be raised and an old migration deleted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from conveyor.backends.base import Backend
from conveyor.domain.job import JobFilter
from conveyor.domain.states import JobState
from conveyor.errors import ConfigurationError, ErrorCode

Migration = Callable[[list[Any], dict[str, Any]], tuple[list[Any], dict[str, Any]]]
Plan = Literal["run", "wait", "too_old"]


class MigrationError(Exception):
    """A payload migration raised or returned something that is not a call; permanent."""

    failure_code = ErrorCode.MIGRATION_FAILED
    failure_type = "MigrationError"
    failure_permanent = True


class VersionUnsupported(Exception):
    """A payload older than the oldest version the task still migrates; permanent."""

    failure_code = ErrorCode.VERSION_UNSUPPORTED
    failure_type = "VersionUnsupported"
    failure_permanent = True
    failure_traceback = ""


@dataclass(frozen=True, slots=True)
class PayloadVersions:
    """A task's payload version, the oldest it accepts, and the migrations between them."""

    version: int = 1
    since: int = 1
    migrations: tuple[tuple[int, Migration], ...] = ()

    @classmethod
    def build(
        cls,
        task: str,
        version: int | None,
        since: int | None,
        migrate: Mapping[int, Migration] | None,
    ) -> PayloadVersions:
        """Check the declaration; raises :class:`ConfigurationError` naming the task."""
        steps = dict(migrate or {})
        current = 1 if version is None else version
        if not isinstance(current, int) or isinstance(current, bool) or current < 1:
            raise ConfigurationError(f"task {task}: version must be an integer >= 1")
        oldest = 1 if since is None else since
        if not isinstance(oldest, int) or isinstance(oldest, bool) or not 1 <= oldest <= current:
            raise ConfigurationError(
                f"task {task}: since must be an integer between 1 and the version ({current})"
            )
        for step, fn in steps.items():
            if not isinstance(step, int) or isinstance(step, bool) or not 2 <= step <= current:
                raise ConfigurationError(
                    f"task {task}: migration {step!r} is outside [2, {current}]: a migration "
                    "numbered n turns a version n-1 payload into version n"
                )
            if not callable(fn):
                raise ConfigurationError(f"task {task}: migration {step} is not callable")
        # Migrations up to ``since`` are never needed again (no such payload is run).
        kept = sorted((s, f) for s, f in steps.items() if s > oldest)
        return cls(current, oldest, tuple(kept))

    def plan(self, payload_version: int) -> Plan:
        """What a worker does with a job of ``payload_version``."""
        if payload_version > self.version:
            return "wait"
        if payload_version < self.since:
            return "too_old"
        return "run"

    def too_old(self, task: str, payload_version: int) -> VersionUnsupported:
        return VersionUnsupported(
            f"task {task}: the job's payload is version {payload_version}, older than the "
            f"oldest this worker migrates ({self.since}; current {self.version}); re-enqueue "
            "it in the current shape, or deploy a worker that still migrates it"
        )

    def upgrade(
        self, task: str, payload_version: int, args: list[Any], kwargs: dict[str, Any]
    ) -> tuple[list[Any], dict[str, Any]]:
        """Apply every migration above ``payload_version`` in order."""
        for step, fn in self.migrations:
            if step <= payload_version:
                continue
            try:
                out = fn(list(args), dict(kwargs))
            except Exception as exc:
                raise MigrationError(
                    f"task {task}: migration to version {step} raised {type(exc).__name__}: {exc}"
                ) from exc
            if (
                not isinstance(out, tuple)
                or len(out) != 2
                or not isinstance(out[0], (list, tuple))
                or not isinstance(out[1], dict)
            ):
                raise MigrationError(
                    f"task {task}: migration to version {step} must return (args, kwargs), "
                    f"not {type(out).__name__}"
                )
            args, kwargs = list(out[0]), dict(out[1])
        return args, kwargs


#: The states of jobs that still hold a payload some worker will read.
_PENDING = (JobState.QUEUED, JobState.SCHEDULED, JobState.RUNNING, JobState.BLOCKED)


@dataclass(frozen=True, slots=True)
class VersionStatus:
    """How many unfinished jobs of a task hold each payload version (``app.inspect.versions``).

    ``by_state`` maps ``queued``/``scheduled``/``running``/``blocked`` to ``{version: count}``;
    ``oldest`` is the oldest version still waiting (``None`` when none is); ``safe_since`` is
    the highest ``since`` you can deploy without dead-lettering a waiting job.
    """

    task: str
    version: int
    since: int
    by_state: dict[str, dict[int, int]]
    oldest: int | None

    @property
    def safe_since(self) -> int:
        return self.version if self.oldest is None else min(self.oldest, self.version)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "version": self.version,
            "since": self.since,
            "by_state": {s: {str(v): n for v, n in c.items()} for s, c in self.by_state.items()},
            "oldest": self.oldest,
            "safe_since": self.safe_since,
        }


async def version_status(
    backend: Backend, task: str, versions: PayloadVersions, *, page: int = 1000
) -> VersionStatus:
    """Count the unfinished jobs of ``task`` by state and payload version (a paged read)."""
    by_state: dict[str, dict[int, int]] = {}
    offset = 0
    while True:
        records = await backend.list_jobs(
            JobFilter(states=_PENDING, task=task), limit=page, offset=offset
        )
        for r in records:
            counts = by_state.setdefault(r.state.value, {})
            counts[r.payload_version] = counts.get(r.payload_version, 0) + 1
        if len(records) < page:
            break
        offset += page
    seen = [v for counts in by_state.values() for v in counts]
    return VersionStatus(
        task, versions.version, versions.since, by_state, min(seen) if seen else None
    )
