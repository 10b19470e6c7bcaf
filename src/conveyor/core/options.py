"""Configuration values: queue settings, task settings, per-call enqueue options, retention."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from conveyor.core.serialization import check_metadata
from conveyor.domain.autoscale import AutoscalePolicy
from conveyor.domain.clock import to_timestamp
from conveyor.domain.durations import Duration, optional_duration
from conveyor.domain.priority import parse_priority
from conveyor.domain.retry import RetryPolicy
from conveyor.errors import ConveyorError, InvalidArgumentsError

Executor = Literal["async", "thread", "process"]

#: Most total runs a job may have: every backend stores it as a 32-bit integer.
MAX_ATTEMPTS = 2**31 - 1


def check_name(field_name: str, value: object) -> None:
    """A name, key or id every backend stores verbatim: a non-empty string of valid UTF-8."""
    if not isinstance(value, str) or not value:
        raise InvalidArgumentsError(f"{field_name} must be a non-empty string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgumentsError(
            f"{field_name} {value!r} holds a lone surrogate; it must be valid UTF-8 text"
        ) from None


def check_attempts(value: object, field_name: str = "max_attempts") -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_ATTEMPTS:
        raise InvalidArgumentsError(
            f"{field_name} must be an integer in [1, {MAX_ATTEMPTS}] (total runs)"
        )


def coerce_retry(
    value: RetryPolicy | int | None, *, field_name: str = "retry"
) -> RetryPolicy | None:
    """Accept a policy or a plain number of total attempts."""
    if value is None:
        return value
    if isinstance(value, RetryPolicy):
        check_attempts(value.attempts, f"{field_name} attempts")
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        check_attempts(value, field_name)
        return RetryPolicy.build(value)
    raise InvalidArgumentsError(f"{field_name} must be a RetryPolicy or an int (total attempts)")


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """A named lane (seed 000's ``QueueConfig``).

    ``concurrency``: most jobs of this queue one worker runs at once (``None``: the worker's
    limit). ``priority``: precedence among the queues one worker consumes — higher is drained
    first. ``retry``: default policy for tasks of this queue that set none. ``dead_letter``:
    the name of the *dead-letter set* this queue's dead jobs join: a label stored on them when
    they fail permanently, so operators list, retry and purge them together (``conveyor dlq list
    --queue NAME``). Dead jobs stay in state ``failed`` (durable, with their history and error);
    no worker consumes them on its own — see docs/operating.md, "Dead-letter sets".
    ``autoscale``: how ``conveyor worker --autoscale`` sizes a group of worker processes
    consuming this queue (seed 000's ``autoScale``; see :mod:`conveyor.domain.autoscale`).
    """

    name: str
    concurrency: int | None = None
    priority: int = 0
    retry: RetryPolicy | None = None
    dead_letter: str | None = None
    autoscale: AutoscalePolicy | None = None

    def to_seed000(self) -> dict[str, Any]:
        """Render as seed 000's ``QueueConfig`` (whose priority is "lower = higher").

        Two fields say what Conveyor does rather than what the seed assumes: ``concurrency`` is
        ``null`` when the queue has no limit of its own (each worker's ``--concurrency`` bounds
        it; ``0`` would read as "runs nothing"), and the dead-letter name is rendered as
        ``deadLetterSet``, never as ``deadLetterQueue``: it names a set of failed jobs, not a
        queue a worker consumes.
        """
        out: dict[str, Any] = {
            "name": self.name,
            "concurrency": self.concurrency,
            "priority": -self.priority,
        }
        if self.retry is not None:
            out["defaultRetryPolicy"] = self.retry.to_seed000()
        if self.dead_letter is not None:
            out["deadLetterSet"] = self.dead_letter
        if self.autoscale is not None:
            out["autoScale"] = self.autoscale.to_seed000()
        return out


@dataclass(frozen=True, slots=True)
class Retention:
    """How long finished jobs are kept before pruning (``None`` = forever), and how many.

    Failed jobs (the dead-letter set) are kept forever unless ``failed`` is set explicitly.
    ``*_max_items`` (issue 19): keep at most that many jobs in the state, the most recently
    created ones, whatever their age (``None``: no count limit).
    """

    completed: float | None = 24 * 3600.0
    cancelled: float | None = 7 * 24 * 3600.0
    expired: float | None = 7 * 24 * 3600.0
    failed: float | None = None
    completed_max_items: int | None = None
    cancelled_max_items: int | None = None
    expired_max_items: int | None = None
    failed_max_items: int | None = None

    def __post_init__(self) -> None:
        for name in ("completed", "cancelled", "expired", "failed"):
            limit = getattr(self, f"{name}_max_items")
            if limit is not None and (
                not isinstance(limit, int) or isinstance(limit, bool) or limit < 0
            ):
                raise InvalidArgumentsError(f"retention {name}_max_items must be an int >= 0")

    @classmethod
    def build(
        cls,
        completed: Duration | None = timedelta(days=1),
        cancelled: Duration | None = timedelta(days=7),
        expired: Duration | None = timedelta(days=7),
        failed: Duration | None = None,
        *,
        completed_max_items: int | None = None,
        cancelled_max_items: int | None = None,
        expired_max_items: int | None = None,
        failed_max_items: int | None = None,
    ) -> Retention:
        return cls(
            completed=optional_duration(completed, field="retention completed"),
            cancelled=optional_duration(cancelled, field="retention cancelled"),
            expired=optional_duration(expired, field="retention expired"),
            failed=optional_duration(failed, field="retention failed"),
            completed_max_items=completed_max_items,
            cancelled_max_items=cancelled_max_items,
            expired_max_items=expired_max_items,
            failed_max_items=failed_max_items,
        )


@dataclass(frozen=True, slots=True)
class EnqueueOptions:
    """Per-call options, validated when built so bad values fail at the call site."""

    delay: float | None = None
    run_at: float | None = None
    priority: int | None = None
    queue: str | None = None
    idempotency_key: str | None = None
    max_attempts: int | None = None
    timeout: float | None = None
    ttl: float | None = None
    trace_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    job_id: str | None = None
    connection: Any = None
    validate: bool | None = None  # issue 19: False skips the producer-side validation

    @classmethod
    def build(
        cls,
        *,
        delay: Duration | None = None,
        run_at: datetime | None = None,
        priority: int | str | None = None,
        queue: str | None = None,
        idempotency_key: str | None = None,
        max_attempts: int | None = None,
        timeout: Duration | None = None,
        ttl: Duration | None = None,
        trace_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        job_id: str | None = None,
        connection: Any = None,
        validate: bool | None = None,
    ) -> EnqueueOptions:
        """Validate and normalise; raises :class:`InvalidArgumentsError` naming the option."""
        try:
            delay_s = optional_duration(delay, field="delay")
            timeout_s = optional_duration(timeout, field="timeout")
            ttl_s = optional_duration(ttl, field="ttl")
            prio = None if priority is None else parse_priority(priority)
        except ValueError as exc:
            raise InvalidArgumentsError(str(exc)) from None
        if delay_s is not None and run_at is not None:
            raise InvalidArgumentsError("pass either delay or run_at, not both")
        run_at_ts: float | None = None
        if run_at is not None:
            if not isinstance(run_at, datetime):
                raise InvalidArgumentsError("run_at must be a timezone-aware datetime")
            try:
                run_at_ts = to_timestamp(run_at)
            except ValueError as exc:
                raise InvalidArgumentsError(f"run_at: {exc}") from None
        if timeout_s is not None and timeout_s <= 0:
            raise InvalidArgumentsError("timeout must be greater than zero")
        if ttl_s is not None and ttl_s <= 0:
            raise InvalidArgumentsError("ttl must be greater than zero")
        if max_attempts is not None:
            check_attempts(max_attempts)
        for name, value in (
            ("queue", queue),
            ("idempotency_key", idempotency_key),
            ("trace_id", trace_id),
            ("job_id", job_id),
        ):
            if value is not None:
                check_name(name, value)
        if validate is not None and not isinstance(validate, bool):
            raise InvalidArgumentsError("validate must be True or False")
        if metadata is not None:
            if not isinstance(metadata, dict):
                raise InvalidArgumentsError("metadata must be a dict")
            metadata = check_metadata(metadata)
        return cls(
            delay=delay_s,
            run_at=run_at_ts,
            priority=prio,
            queue=queue,
            idempotency_key=idempotency_key,
            max_attempts=max_attempts,
            timeout=timeout_s,
            ttl=ttl_s,
            trace_id=trace_id,
            metadata=dict(metadata or {}),
            job_id=job_id,
            connection=connection,
            validate=validate,
        )

    @classmethod
    def from_user(cls, options: dict[str, Any]) -> EnqueueOptions:
        """:meth:`build` from ``task.options(**options)``: an unknown name is reported as such
        (with the known ones), a bad value by the option it was given for."""
        unknown = sorted(set(options) - OPTION_NAMES)
        if unknown:
            raise InvalidArgumentsError(
                f"unknown enqueue option{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}"
                f" (known: {', '.join(sorted(OPTION_NAMES))})"
            )
        try:
            return cls.build(**options)
        except ConveyorError:
            raise  # named already (InvalidArgumentsError, SerializationError)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentsError(f"invalid enqueue option value: {exc}") from None

    def merged(self, other: EnqueueOptions) -> EnqueueOptions:
        """These options overridden by every field ``other`` sets."""
        values: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            mine, theirs = getattr(self, name), getattr(other, name)
            if name == "metadata":
                values[name] = {**mine, **theirs}
            else:
                values[name] = theirs if theirs is not None else mine
        if other.delay is not None:
            values["run_at"] = None
        if other.run_at is not None:
            values["delay"] = None
        return EnqueueOptions(**values)


#: The names ``task.options(...)`` accepts.
OPTION_NAMES = frozenset(EnqueueOptions.__dataclass_fields__)
