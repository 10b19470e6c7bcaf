"""The built-in pages: overview, jobs (by state, queue, task; search), job detail, dead
letters, schedules, workers."""

from __future__ import annotations

from typing import Any

from conveyor.errors import JobNotFoundError
from conveyor.web.pages import Page, PageContext
from conveyor.web.reads import STATES, JobQuery


async def overview(ctx: PageContext) -> tuple[str, dict[str, Any]]:
    return "overview.html", await ctx.reads.overview()


async def jobs(ctx: PageContext) -> tuple[str, dict[str, Any]]:
    query = JobQuery.parse(ctx.params)
    data = await ctx.reads.jobs(query)
    return "jobs.html", {**data, "query": query, "states": STATES}


async def job(ctx: PageContext) -> tuple[str, dict[str, Any]]:
    job_id = ctx.request.path_params["job_id"]
    data = await ctx.reads.job(job_id)
    if data is None:
        raise JobNotFoundError(job_id)
    return "job.html", {"job": data}


async def dead_letters(ctx: PageContext) -> tuple[str, dict[str, Any]]:
    queue = ctx.params.get("queue") or None
    return "dead.html", {"groups": await ctx.reads.dead_letter_groups(queue), "queue": queue}


async def schedules(ctx: PageContext) -> tuple[str, dict[str, Any]]:
    return "schedules.html", {"schedules": await ctx.reads.schedules()}


async def schedule(ctx: PageContext) -> tuple[str, dict[str, Any]]:
    return "schedule.html", {"s": await ctx.reads.schedule(ctx.request.path_params["name"])}


async def workers(ctx: PageContext) -> tuple[str, dict[str, Any]]:
    return "workers.html", {"workers": await ctx.reads.workers()}


def default_pages() -> list[Page]:
    """The pages every dashboard has, in navigation order."""
    return [
        Page("overview", "/", "Overview", overview),
        Page("jobs", "/jobs", "Jobs", jobs),
        Page("job", "/jobs/{job_id}", "Job", job, nav=False),
        Page("dead", "/dead-letters", "Dead letters", dead_letters),
        Page("schedules", "/schedules", "Schedules", schedules),
        Page("schedule", "/schedules/{name}", "Schedule", schedule, nav=False),
        Page("workers", "/workers", "Workers", workers),
    ]
