"""The acceptance app plus a queue that declares how its workers autoscale (quickly, for
tests): ``tests.acceptance.scale_apps:from_env``."""

from __future__ import annotations

from conveyor import AutoscalePolicy, Conveyor

from . import apps

#: One slot per process, but four jobs per process before the group grows: so a group of three
#: busy processes (three running jobs, nothing waiting) counts as load for one, and shrinks
#: while every process is in the middle of a job.
POLICY = AutoscalePolicy(
    min_workers=1,
    max_workers=3,
    target_wait=0.5,
    jobs_per_worker=4,
    scale_down_after=1.0,
    cooldown=0.3,
    interval=0.2,
)


def from_env() -> Conveyor:
    app = apps.from_env()
    app.queue("scaled", autoscale=POLICY)
    return app
