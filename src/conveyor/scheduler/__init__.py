"""Schedules: cron expressions and intervals that fire once per tick across any number of
scheduler processes."""

from conveyor.scheduler.scheduler import ScheduleInfo, Schedules
from conveyor.scheduler.spec import ScheduleSpec, build_spec

__all__ = ["ScheduleInfo", "ScheduleSpec", "Schedules", "build_spec"]
