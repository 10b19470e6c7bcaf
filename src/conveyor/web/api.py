"""The JSON API (``/api/...``): everything the pages show and do, described by the OpenAPI
document at ``/api/openapi.json``."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from conveyor.errors import JobNotFoundError
from conveyor.web.actions import Actions
from conveyor.web.auth import User
from conveyor.web.config import DashboardConfig
from conveyor.web.errors import Refused, error_status
from conveyor.web.openapi import document
from conveyor.web.reads import BadRequest, JobQuery, Reads, check_name

log = logging.getLogger("conveyor.web")


class ApiHost(Protocol):
    """What the API needs of the dashboard: access checks, body reading, reads, actions."""

    reads: Reads
    actions: Actions
    config: DashboardConfig

    async def authorize(self, request: Request, *, write: bool) -> User: ...

    async def read_body(self, request: Request) -> dict[str, str]: ...

    def check_csrf(self, request: Request, sent: str | None) -> None: ...


def routes(d: ApiHost) -> list[Route]:
    """The API's routes over one dashboard."""

    def read(fn: Callable[[Request], Awaitable[Any]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                await d.authorize(request, write=False)
                return JSONResponse(await fn(request))
            except Refused as exc:
                return _refused(exc)
            except Exception as exc:  # noqa: BLE001 - mapped to a status
                return _error(exc)

        return endpoint

    def write(
        fn: Callable[[Request, dict[str, str]], Awaitable[Any]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                await d.authorize(request, write=True)
                body = await d.read_body(request)
                d.check_csrf(request, request.headers.get("x-csrf-token"))
                return JSONResponse(await fn(request, body))
            except Refused as exc:
                return _refused(exc)
            except Exception as exc:  # noqa: BLE001 - mapped to a status
                return _error(exc)

        return endpoint

    def _refused(exc: Refused) -> Response:
        headers = {"WWW-Authenticate": 'Basic realm="conveyor"'} if exc.status == 401 else {}
        return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=headers)

    def _error(exc: Exception) -> Response:
        status, message = error_status(exc)
        if status == 500:
            log.exception("dashboard API call failed")
        return JSONResponse({"error": message}, status_code=status)

    r, a = d.reads, d.actions

    async def jobs(request: Request) -> Any:
        return await r.jobs(JobQuery.parse(dict(request.query_params)))

    async def job(request: Request) -> Any:
        found = await r.job(request.path_params["job_id"])
        if found is None:
            raise JobNotFoundError(request.path_params["job_id"])
        return found

    async def throughput(request: Request) -> Any:
        raw = request.query_params.get("hours") or "24"
        if not raw.isdigit() or not 1 <= int(raw) <= 48:
            raise BadRequest("hours must be an integer from 1 to 48")
        return await r.throughput(int(raw))

    async def dead(request: Request) -> Any:
        return {
            "groups": await r.dead_letter_groups(
                check_name(request.query_params.get("queue"), "queue")
            )
        }

    async def job_verb(request: Request, body: dict[str, str]) -> Any:
        verb, job_id = request.path_params["verb"], request.path_params["job_id"]
        return await {"retry": a.retry, "cancel": a.cancel, "delete": a.delete}[verb](job_id)

    async def group_verb(request: Request, body: dict[str, str]) -> Any:
        code, queue = body.get("error_code", ""), body.get("queue") or None
        if request.path_params["verb"] == "retry":
            return await a.retry_group(code, queue)
        return await a.purge_group(code, queue)

    async def schedule_verb(request: Request, body: dict[str, str]) -> Any:
        return await a.schedule(request.path_params["name"], request.path_params["verb"])

    async def schedules(request: Request) -> Any:
        return {"schedules": await r.schedules()}

    async def workers(request: Request) -> Any:
        return {"workers": await r.workers()}

    async def openapi(request: Request) -> Any:
        return document(d.config.title, str(request.scope.get("root_path") or ""))

    async def schedule(request: Request) -> Any:
        return await r.schedule(request.path_params["name"])

    async def counts(request: Request) -> Any:
        return await r.counts()

    async def health(request: Request) -> Any:
        return await r.health()

    async def overview(request: Request) -> Any:
        return await r.overview()

    verbs = "{verb:str}"
    return [
        Route("/api/openapi.json", read(openapi)),
        Route("/api/overview", read(overview)),
        Route("/api/counts", read(counts)),
        Route("/api/throughput", read(throughput)),
        Route("/api/health", read(health)),
        Route("/api/jobs", read(jobs)),
        Route("/api/jobs/{job_id}", read(job)),
        Route(
            "/api/jobs/{job_id}/{verb:str}",
            _only(write(job_verb), {"retry", "cancel", "delete"}),
            methods=["POST"],
        ),
        Route("/api/dead-letters", read(dead)),
        Route(
            f"/api/dead-letters/{verbs}",
            _only(write(group_verb), {"retry", "purge"}),
            methods=["POST"],
        ),
        Route("/api/schedules", read(schedules)),
        Route("/api/schedules/{name}", read(schedule)),
        Route(
            "/api/schedules/{name}/{verb:str}",
            _only(write(schedule_verb), {"pause", "resume", "trigger"}),
            methods=["POST"],
        ),
        Route("/api/workers", read(workers)),
    ]


def _only(
    endpoint: Callable[[Request], Awaitable[Response]], verbs: set[str]
) -> Callable[[Request], Awaitable[Response]]:
    async def wrapped(request: Request) -> Response:
        if request.path_params.get("verb") not in verbs:
            return JSONResponse({"error": "not found"}, status_code=404)
        return await endpoint(request)

    return wrapped
