"""The dashboard's read model: what each page and API route shows, as JSON-ready dicts.

Every read has bounded cost at any store size (see the browse capability): pages use keyset
cursors, counts are exact up to a cap, throughput comes from stored per-minute counters.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, cast

from conveyor.backends.capabilities import JobBrowser, require
from conveyor.backends.capabilities.browse import BUCKET, BrowseQuery, bucket_of
from conveyor.core.handle import JobInfo, decode_record
from conveyor.domain.job import JobFilter
from conveyor.domain.states import JobState
from conveyor.errors import ConveyorError, InvalidArgumentsError
from conveyor.web.host import DashboardHost
from conveyor.web.redact import Redactor

#: Job ids are sortable hex-like strings; anything else in a cursor or id is refused early.
ID_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
NAME_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,200}$")
STATES = [s.value for s in JobState]
#: Jobs a metadata search looks through (newest first, other filters applied).
SEARCH_BUDGET = 5_000


class BadRequest(ConveyorError):
    """A query parameter the dashboard refuses (answered with 400)."""

    code = "bad_request"


def check_id(value: str, what: str = "job id") -> str:
    if not ID_RE.match(value):
        raise BadRequest(f"{what} {value[:40]!r} is malformed")
    return value


def check_name(value: str | None, what: str) -> str | None:
    if value is None or value == "":
        return None
    if not NAME_RE.match(value):
        raise BadRequest(f"{what} is malformed (control characters, or over 200 characters)")
    return value


@dataclass(frozen=True, slots=True)
class JobQuery:
    """The jobs page's filters and cursor (validated)."""

    state: str | None = None
    queue: str | None = None
    task: str | None = None
    error_code: str | None = None
    search: str | None = None
    before: str | None = None
    after: str | None = None
    limit: int = 50

    @classmethod
    def parse(cls, params: dict[str, str]) -> JobQuery:
        state = params.get("state") or None
        if state is not None and state not in STATES:
            raise BadRequest(f"state must be one of {', '.join(STATES)}")
        try:
            limit = int(params.get("limit") or 50)
        except ValueError:
            raise BadRequest("limit must be an integer") from None
        if not 1 <= limit <= 500:
            raise BadRequest("limit must be between 1 and 500")
        before, after = params.get("before") or None, params.get("after") or None
        if before and after:
            after = None  # before wins (documented in the OpenAPI description)
        search = check_name(params.get("q"), "search text")
        return cls(
            state=state,
            queue=check_name(params.get("queue"), "queue"),
            task=check_name(params.get("task"), "task"),
            error_code=check_name(params.get("error_code"), "error_code"),
            search=search,
            before=None if before is None else check_id(before, "cursor"),
            after=None if after is None else check_id(after, "cursor"),
            limit=limit,
        )

    def browse(self, limit: int | None = None) -> BrowseQuery:
        return BrowseQuery(
            states=None if self.state is None else (JobState(self.state),),
            queue=self.queue,
            task=self.task,
            error_code=self.error_code,
            before=self.before,
            after=self.after,
            limit=self.limit + 1 if limit is None else limit,
        )


class Reads:
    """Reads over one app, with redaction applied to everything that leaves."""

    def __init__(self, app: DashboardHost, redactor: Redactor, count_cap: int) -> None:
        self.app = app
        self.redactor = redactor
        self.count_cap = count_cap

    async def browser(self) -> JobBrowser:
        backend = await self.app.backend()
        require(backend, JobBrowser, "the dashboard")
        return cast(JobBrowser, backend)

    def job_dict(self, info: JobInfo, *, full: bool) -> dict[str, Any]:
        data = info.to_dict()
        if not full:
            for key in ("logs", "errors", "timeline", "progress", "result"):
                data.pop(key, None)
            if data.get("error"):
                data["error"] = {k: data["error"][k] for k in ("code", "type", "message")}
        return self.redactor.job(data)

    # -- overview -------------------------------------------------------------------------
    async def counts(self) -> dict[str, Any]:
        browser = await self.browser()
        rows = await browser.count_states(self.count_cap)
        queues: dict[str, dict[str, Any]] = {}
        for name in [self.app.default_queue, *self.app.queues]:
            queues.setdefault(name, {"counts": dict.fromkeys(STATES, 0), "exact": True})
        totals = dict.fromkeys(STATES, 0)
        exact = True
        for row in rows:
            q = queues.setdefault(row.queue, {"counts": dict.fromkeys(STATES, 0), "exact": True})
            q["counts"][row.state.value] = row.count
            q["exact"] = q["exact"] and row.exact
            totals[row.state.value] += row.count
            exact = exact and row.exact
        oldest = await browser.oldest_queued()
        now = self.app.now()
        for name, q in queues.items():
            head = oldest.get(name)
            q["oldest_queued_age"] = None if head is None else max(now - head, 0.0)
        return {"queues": queues, "totals": totals, "exact": exact, "cap": self.count_cap}

    async def throughput(self, hours: int = 24, queue: str | None = None) -> dict[str, Any]:
        browser = await self.browser()
        now = self.app.now()
        since = bucket_of(now - hours * 3600)
        rows = await browser.read_throughput(since)
        step = 3600.0 if hours > 2 else BUCKET * 5
        series: dict[float, dict[str, float]] = {}
        first = since - since % step
        t = first
        while t <= now:
            series[t] = {"succeeded": 0, "retried": 0, "dead": 0, "cancelled": 0}
            t += step
        totals = {"succeeded": 0, "retried": 0, "dead": 0, "cancelled": 0, "duration": 0.0}
        for r in rows:
            if queue is not None and r.queue != queue:
                continue
            slot = series.setdefault(r.bucket - r.bucket % step, dict.fromkeys(totals, 0))
            slot[r.outcome] = slot.get(r.outcome, 0) + r.count
            if r.outcome in totals:
                totals[r.outcome] += r.count
            totals["duration"] += r.duration
        finished = totals["succeeded"] + totals["retried"] + totals["dead"]
        failed = totals["retried"] + totals["dead"]
        return {
            "hours": hours,
            "step": step,
            "series": [{"at": at, **v} for at, v in sorted(series.items())],
            "totals": totals,
            "failure_rate": None if not finished else failed / finished,
            "per_minute": (totals["succeeded"] + failed) / (hours * 60.0),
        }

    async def health(self) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            backend = await self.app.backend()
            await backend.get_job("0")
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
        return {
            "ok": True,
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
            "store": self.app.factory.describe().get("url"),
        }

    async def workers(self) -> list[dict[str, Any]]:
        found = await self.app.inspect.workers(include_stale=True)
        now = self.app.now()
        running = await (await self.browser()).browse_jobs(
            BrowseQuery(states=(JobState.RUNNING,), limit=500)
        )
        by_owner: dict[str, list[dict[str, Any]]] = {}
        for r in running:
            by_owner.setdefault(r.lease_owner or "", []).append(
                {"id": r.id, "task": r.task, "queue": r.queue, "started_at": r.started_at}
            )
        out = []
        for w in found:
            age = max(now - w.heartbeat_at, 0.0)
            out.append(
                {
                    **self.app.inspect.as_seed000_worker(w),
                    "id": w.id,
                    "host": w.host,
                    "pid": w.pid,
                    "queueNames": list(w.queues),
                    "concurrency": w.concurrency,
                    "startedAt": w.started_at,
                    "heartbeatAt": w.heartbeat_at,
                    "heartbeatAge": age,
                    "alive": age <= 3 * self.app.lease,
                    "jobs": by_owner.get(w.id, []),
                }
            )
        return out

    async def overview(self) -> dict[str, Any]:
        return {
            "counts": await self.counts(),
            "throughput": await self.throughput(),
            "health": await self.health(),
            "workers": await self.workers(),
        }

    # -- jobs -----------------------------------------------------------------------------
    async def jobs(self, q: JobQuery) -> dict[str, Any]:
        browser = await self.browser()
        note = None
        if q.search:
            records, note = await self._search(browser, q)
            more_older = more_newer = False
        else:
            records = await browser.browse_jobs(q.browse())
            more = len(records) > q.limit
            if q.after is not None:
                more_newer = more
                records = records[-q.limit :] if more else records
                more_older = True
            else:
                more_older = more
                records = records[: q.limit]
                more_newer = q.before is not None
        infos = [decode_record(self.app.serializer, r) for r in records]
        jobs = [self.job_dict(i, full=False) for i in infos]
        return {
            "jobs": jobs,
            "older": jobs[-1]["id"] if jobs and more_older else None,
            "newer": jobs[0]["id"] if jobs and more_newer else None,
            "note": note,
        }

    async def _search(self, browser: JobBrowser, q: JobQuery) -> tuple[list[Any], str | None]:
        text = (q.search or "").strip()
        backend = await self.app.backend()
        if ID_RE.match(text):
            record = await backend.get_job(text)
            if record is not None:
                return [record], None
        job_id = await browser.job_for_key(text)
        if job_id is not None:
            record = await backend.get_job(job_id)
            if record is not None:
                return [record], f"idempotency key {text!r}"
        key, sep, value = text.partition("=")
        if not sep:
            return [], f"no job has the id or idempotency key {text!r}"
        key = key.strip()
        found: list[Any] = []
        seen = 0
        cursor = q.before
        while seen < SEARCH_BUDGET and len(found) < q.limit:
            page = await browser.browse_jobs(
                BrowseQuery(
                    states=None if q.state is None else (JobState(q.state),),
                    queue=q.queue,
                    task=q.task,
                    error_code=q.error_code,
                    before=cursor,
                    limit=500,
                )
            )
            for r in page:
                if str(r.metadata.get(key)) == value.strip():
                    found.append(r)
            seen += len(page)
            if len(page) < 500:
                break
            cursor = page[-1].id
        return found[: q.limit], f"metadata {key}={value.strip()} among the newest {seen} jobs"

    async def job(self, job_id: str) -> dict[str, Any] | None:
        info = await self.app.inspect.job(check_id(job_id))
        return None if info is None else self.job_dict(info, full=True)

    # -- dead letters ---------------------------------------------------------------------
    async def dead_letter_groups(self, queue: str | None = None) -> list[dict[str, Any]]:
        """Failed jobs grouped by error code (the newest 2,000 looked at; counts capped)."""
        browser = await self.browser()
        records = await browser.browse_jobs(
            BrowseQuery(states=(JobState.FAILED,), queue=queue, limit=2000)
        )
        groups: dict[str, dict[str, Any]] = {}
        for r in records:
            code = r.error.code if r.error is not None else "unknown"
            g = groups.setdefault(
                code,
                {"code": code, "count": 0, "tasks": {}, "queues": {}, "latest": None},
            )
            g["count"] += 1
            g["tasks"][r.task] = g["tasks"].get(r.task, 0) + 1
            g["queues"][r.queue] = g["queues"].get(r.queue, 0) + 1
            if g["latest"] is None:
                g["latest"] = {
                    "id": r.id,
                    "message": r.error.message if r.error else "",
                    "finished_at": r.finished_at,
                }
        out = sorted(groups.values(), key=lambda g: -int(g["count"]))
        for g in out:
            g["more"] = len(records) >= 2000
        return out

    # -- schedules ------------------------------------------------------------------------
    async def schedules(self) -> list[dict[str, Any]]:
        return [s.to_dict() for s in await self.app.schedules.list()]

    async def schedule(self, name: str) -> dict[str, Any]:
        info = await self.app.schedules.get(check_name(name, "schedule") or "")
        return {**info.to_dict(), "history": await self.app.schedules.history(info.name)}


def retry_filter(error_code: str | None, queue: str | None) -> JobFilter:
    """The failed jobs of one dead-letter group."""
    if error_code is None:
        raise InvalidArgumentsError("a dead-letter group needs its error code")
    return JobFilter(states=(JobState.FAILED,), error_code=error_code, queue=queue)
