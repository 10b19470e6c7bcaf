"""Tick arithmetic for schedules: cron expressions (via croniter) and fixed intervals, in any
IANA time zone, with daylight-saving transitions handled explicitly.

Cron expressions are evaluated in the schedule's local wall-clock time. Each local tick is turned
into an instant with ``fold=0``:

* **skipped hour** (spring forward): a tick inside the gap (02:30 when clocks jump from 02:00 to
  03:00) fires once, shifted forward by the gap (at 03:30 local); a tick that would land on an
  instant already produced is dropped, so nothing fires twice;
* **repeated hour** (fall back): a local time that happens twice (01:30) fires once, at its first
  occurrence.

Intervals (``every``) are anchored at the schedule's start (or the Unix epoch), so every process
computes the same ticks.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterNotAlphaError, croniter


def load_zone(name: str) -> ZoneInfo:
    """A ``ZoneInfo`` or ``ValueError`` naming the bad zone."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(
            f"timezone: unknown time zone {name!r}; use an IANA name such as 'UTC', "
            "'Europe/Paris' or 'America/New_York'"
        ) from None


def check_cron(expr: str) -> None:
    """Raise ``ValueError`` (pointing at the ``cron`` field) unless ``expr`` is valid."""
    fields = expr.split()
    if len(fields) not in (5, 6):
        raise ValueError(
            f"cron: {expr!r} has {len(fields)} fields; use 5 (minute hour day month weekday) or "
            "6 with seconds first (second minute hour day month weekday)"
        )
    try:
        croniter(expr, datetime(2000, 1, 1), second_at_beginning=len(fields) == 6)
    except (CroniterBadCronError, CroniterNotAlphaError, ValueError, KeyError) as exc:
        raise ValueError(f"cron: {expr!r} is not a valid cron expression ({exc})") from None


def cron_ticks(expr: str, zone: ZoneInfo, after: float) -> Iterator[float]:
    """Instants (epoch seconds) strictly after ``after`` at which ``expr`` fires in ``zone``."""
    seconds = len(expr.split()) == 6
    local_start = datetime.fromtimestamp(after, tz=UTC).astimezone(zone).replace(tzinfo=None)
    it = croniter(expr, local_start, second_at_beginning=seconds)
    last = after
    while True:
        try:
            local = it.get_next(datetime)
        except CroniterBadDateError:
            return
        instant = local.replace(tzinfo=zone, fold=0).timestamp()
        if instant > last:
            last = instant
            yield instant


def interval_ticks(every: float, anchor: float, after: float) -> Iterator[float]:
    """``anchor + k * every`` for every ``k`` with a value strictly after ``after``."""
    k = max(int((after - anchor) // every) + 1, 0)
    while True:
        tick = anchor + k * every
        if tick > after:
            yield tick
        k += 1


def ticks_between(
    *,
    cron: str | None,
    every: float | None,
    zone: ZoneInfo,
    anchor: float,
    after: float,
    until: float,
    start: float | None = None,
    end: float | None = None,
    limit: int = 10_000,
) -> list[float]:
    """Ticks in ``(after, until]`` that fall inside ``[start, end]``, at most ``limit`` (the
    latest ones are kept when there are more)."""
    lower = max(after, (start - 1e-6) if start is not None else after)
    source = cron_ticks(cron, zone, lower) if cron else interval_ticks(every or 1.0, anchor, lower)
    out: list[float] = []
    for tick in source:
        if tick > until or (end is not None and tick > end):
            break
        out.append(tick)
        if len(out) > limit:
            out.pop(0)
    return out


def next_tick(
    *,
    cron: str | None,
    every: float | None,
    zone: ZoneInfo,
    anchor: float,
    after: float,
    start: float | None = None,
    end: float | None = None,
) -> float | None:
    """The first tick after ``after`` (and not before ``start``), or ``None`` past ``end``."""
    lower = max(after, (start - 1e-6) if start is not None else after)
    source = cron_ticks(cron, zone, lower) if cron else interval_ticks(every or 1.0, anchor, lower)
    for tick in source:
        return None if end is not None and tick > end else tick
    return None
