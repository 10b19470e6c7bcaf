"""Schedule definitions and the state kept for each schedule in the store."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from conveyor.domain.clock import to_timestamp
from conveyor.domain.durations import Duration, optional_duration
from conveyor.domain.ids import format_uuid7
from conveyor.domain.priority import parse_priority
from conveyor.scheduler.timing import check_cron, load_zone

MissedPolicy = Literal["skip", "catch_up"]
HISTORY_LIMIT = 50


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """A recurring enqueue of ``task`` with ``args``/``kwargs``.

    Exactly one of ``cron`` (5 fields, or 6 with seconds first) and ``every`` (seconds) is set.
    ``overlap=False`` (default) skips a tick while the previous run is still queued or running.
    ``on_missed``: ticks older than ``misfire_grace`` when a scheduler gets to them are skipped
    (``"skip"``, default) or all run (``"catch_up"``, at most ``catch_up_limit`` of the latest).
    ``jitter`` delays each run by a stable pseudo-random amount below it.
    """

    name: str
    task: str
    cron: str | None = None
    every: float | None = None
    timezone: str = "UTC"
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    start: float | None = None
    end: float | None = None
    jitter: float = 0.0
    overlap: bool = False
    on_missed: MissedPolicy = "skip"
    catch_up_limit: int | None = None
    misfire_grace: float = 60.0
    queue: str | None = None
    priority: int | None = None

    def __post_init__(self) -> None:
        validate(self)

    @property
    def anchor(self) -> float:
        return self.start if self.start is not None else 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["args"] = list(self.args)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScheduleSpec:
        data = dict(data)
        data["args"] = tuple(data.get("args", ()))
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def job_id(self, tick: float) -> str:
        """The id of the job for one tick: a UUIDv7 of the tick's time whose other bits come
        from a hash of the name and the tick, so it is the same in every process."""
        digest = hashlib.sha256(f"{self.name}\x00{tick!r}".encode()).digest()
        bits = int.from_bytes(digest[:10], "big")
        return format_uuid7(int(tick * 1000), bits >> 64, bits)

    def jitter_for(self, tick: float) -> float:
        if self.jitter <= 0:
            return 0.0
        digest = hashlib.sha256(f"jitter\x00{self.name}\x00{tick!r}".encode()).digest()
        return self.jitter * int.from_bytes(digest[:8], "big") / 2**64

    def updated(self, **changes: Any) -> ScheduleSpec:
        """A copy with ``changes`` applied, accepting the values :func:`build_spec` does
        (durations as ``"10s"``, numbers or timedeltas; aware datetimes; priority names)."""
        for name in ("every", "jitter", "misfire_grace"):
            if changes.get(name) is not None:
                changes[name] = optional_duration(changes[name], field=name)
        for name in ("start", "end"):
            if isinstance(changes.get(name), datetime):
                changes[name] = to_timestamp(changes[name])
        if changes.get("priority") is not None:
            changes["priority"] = parse_priority(changes["priority"])
        return replace(self, **changes)


def validate(spec: ScheduleSpec) -> None:
    """Raise ``ValueError`` naming the offending field."""
    if not spec.name or not isinstance(spec.name, str):
        raise ValueError("name: a schedule needs a non-empty name")
    if (spec.cron is None) == (spec.every is None):
        raise ValueError(f"schedule {spec.name!r}: set exactly one of cron= or every=")
    if spec.cron is not None:
        check_cron(spec.cron)
    if spec.every is not None and spec.every <= 0:
        raise ValueError(f"every: schedule {spec.name!r} needs an interval greater than zero")
    load_zone(spec.timezone)
    if spec.jitter < 0:
        raise ValueError("jitter: must not be negative")
    if spec.on_missed not in ("skip", "catch_up"):
        raise ValueError("on_missed: use 'skip' or 'catch_up'")
    if spec.catch_up_limit is not None and spec.catch_up_limit < 1:
        raise ValueError("catch_up_limit: must be >= 1")
    if spec.start is not None and spec.end is not None and spec.end <= spec.start:
        raise ValueError("end: must be after start")


def build_spec(
    name: str,
    task: str,
    *,
    cron: str | None = None,
    every: Duration | None = None,
    timezone: str = "UTC",
    args: tuple[Any, ...] | list[Any] = (),
    kwargs: dict[str, Any] | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    jitter: Duration | None = None,
    overlap: bool = False,
    on_missed: MissedPolicy = "skip",
    catch_up_limit: int | None = None,
    misfire_grace: Duration = 60.0,
    queue: str | None = None,
    priority: int | str | None = None,
) -> ScheduleSpec:
    """Build and validate a spec from user-facing values (durations, datetimes, names)."""
    return ScheduleSpec(
        name=name,
        task=task,
        cron=cron,
        every=optional_duration(every, field="every"),
        timezone=timezone,
        args=tuple(args),
        kwargs=dict(kwargs or {}),
        start=None if start is None else to_timestamp(start),
        end=None if end is None else to_timestamp(end),
        jitter=optional_duration(jitter, field="jitter") or 0.0,
        overlap=overlap,
        on_missed=on_missed,
        catch_up_limit=catch_up_limit,
        misfire_grace=optional_duration(misfire_grace, field="misfire_grace") or 0.0,
        queue=queue,
        priority=None if priority is None else parse_priority(priority),
    )


@dataclass(slots=True)
class ScheduleState:
    """What the store keeps per schedule (one JSON value, updated by compare-and-set)."""

    spec: ScheduleSpec
    paused: bool = False
    cursor: float | None = None  # the last tick handled (run, skipped or missed)
    last_job_id: str | None = None
    last_tick: float | None = None
    from_code: bool = True
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_json(),
            "paused": self.paused,
            "cursor": self.cursor,
            "last_job_id": self.last_job_id,
            "last_tick": self.last_tick,
            "from_code": self.from_code,
            "history": self.history[-HISTORY_LIMIT:],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScheduleState:
        return cls(
            spec=ScheduleSpec.from_json(data["spec"]),
            paused=bool(data.get("paused", False)),
            cursor=data.get("cursor"),
            last_job_id=data.get("last_job_id"),
            last_tick=data.get("last_tick"),
            from_code=bool(data.get("from_code", True)),
            history=list(data.get("history", [])),
        )

    def record(self, tick: float, outcome: str, job_id: str | None, at: float) -> None:
        """Append one tick's outcome (``enqueued``, ``skipped_overlap``, ``missed``,
        ``triggered``) to the capped history."""
        self.history.append({"tick": tick, "outcome": outcome, "job_id": job_id, "at": at})
        del self.history[:-HISTORY_LIMIT]
