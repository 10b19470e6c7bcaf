"""What the dashboard can change: retry, cancel and delete a job; retry or purge a dead-letter
group; pause, resume and trigger a schedule. Each returns a short message for the page and a
JSON-ready result; each bulk action is capped (``bulk_limit``)."""

from __future__ import annotations

from typing import Any

from conveyor.backends.base import CancelOutcome
from conveyor.domain.job import JobFilter
from conveyor.domain.states import JobState
from conveyor.errors import InvalidStateError, JobNotFoundError
from conveyor.web.host import DashboardHost
from conveyor.web.reads import check_id, check_name, retry_filter


class Actions:
    """Mutations over one app (the access policy is checked before any of these runs)."""

    def __init__(self, app: DashboardHost, bulk_limit: int) -> None:
        self.app = app
        self.bulk_limit = bulk_limit

    async def retry(self, job_id: str) -> dict[str, Any]:
        await self.app.dead_letters.retry(check_id(job_id))
        return {"id": job_id, "state": "queued", "message": f"job {job_id} re-queued"}

    async def cancel(self, job_id: str) -> dict[str, Any]:
        outcome = await self.app.cancel(check_id(job_id), "cancelled from the dashboard")
        if outcome is CancelOutcome.NOT_FOUND:
            raise JobNotFoundError(job_id)
        if outcome is CancelOutcome.NOT_CANCELLABLE:
            raise InvalidStateError(f"job {job_id} already finished; it cannot be cancelled")
        message = (
            f"job {job_id} cancelled"
            if outcome is CancelOutcome.CANCELLED
            else f"cancellation of running job {job_id} requested"
        )
        return {"id": job_id, "outcome": outcome.value, "message": message}

    async def delete(self, job_id: str) -> dict[str, Any]:
        backend = await self.app.backend()
        record = await backend.get_job(check_id(job_id))
        if record is None:
            raise JobNotFoundError(job_id)
        if not record.state.is_terminal:
            raise InvalidStateError(
                f"job {job_id} is {record.state.value}; cancel it first, then delete it"
            )
        n = await backend.delete_jobs(JobFilter(ids=(job_id,)), limit=1)
        if not n:
            raise InvalidStateError(f"job {job_id} changed state before it could be deleted")
        return {"id": job_id, "deleted": True, "message": f"job {job_id} deleted"}

    async def retry_group(self, error_code: str, queue: str | None) -> dict[str, Any]:
        backend = await self.app.backend()
        flt = retry_filter(check_name(error_code, "error code"), check_name(queue, "queue"))
        ids = await backend.retry_jobs(flt, now=self.app.backend_now(), limit=self.bulk_limit)
        return {
            "retried": len(ids),
            "capped": len(ids) >= self.bulk_limit,
            "message": f"{len(ids)} dead letter(s) with code {error_code} re-queued",
        }

    async def purge_group(self, error_code: str, queue: str | None) -> dict[str, Any]:
        backend = await self.app.backend()
        flt = retry_filter(check_name(error_code, "error code"), check_name(queue, "queue"))
        n = await backend.delete_jobs(flt, limit=self.bulk_limit)
        return {
            "purged": n,
            "capped": n >= self.bulk_limit,
            "message": f"{n} dead letter(s) with code {error_code} purged",
        }

    async def schedule(self, name: str, action: str) -> dict[str, Any]:
        name = check_name(name, "schedule") or ""
        schedules = self.app.schedules
        if action == "pause":
            await schedules.pause(name)
            return {"name": name, "paused": True, "message": f"schedule {name} paused"}
        if action == "resume":
            await schedules.resume(name)
            return {"name": name, "paused": False, "message": f"schedule {name} resumed"}
        job_id = await schedules.trigger(name)
        return {"name": name, "job_id": job_id, "message": f"schedule {name} ran as {job_id}"}


__all__ = ["Actions", "JobState"]
