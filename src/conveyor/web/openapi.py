"""The OpenAPI 3.1 document of the JSON API (served at ``/api/openapi.json``)."""

from __future__ import annotations

from typing import Any

from conveyor.domain.states import JobState

_OBJ: dict[str, Any] = {"type": "object"}
_ERR = {
    "description": "error",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "string"}},
            }
        }
    },
}


def _ok(schema: dict[str, Any] | None = None, description: str = "ok") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema or _OBJ}}}


def _param(name: str, where: str, schema: dict[str, Any], desc: str, required: bool = False) -> Any:
    return {
        "name": name,
        "in": where,
        "required": required or where == "path",
        "schema": schema,
        "description": desc,
    }


_ID = {"type": "string", "pattern": "^[A-Za-z0-9_.:\\-]{1,128}$"}
_CURSOR = {"type": "string", "pattern": "^[A-Za-z0-9_.:\\-]{0,128}$"}
_NAME = {"type": "string", "pattern": "^[^\\x00-\\x1f\\x7f]{0,200}$"}
_JOB = {
    "type": "object",
    "required": ["id", "task", "queue", "state"],
    "properties": {
        "id": {"type": "string"},
        "task": {"type": "string"},
        "queue": {"type": "string"},
        "state": {"type": "string", "enum": [s.value for s in JobState]},
        "attempts": {"type": "integer"},
        "error": {"type": ["object", "null"]},
    },
}
_PAGE = {
    "type": "object",
    "required": ["jobs", "older", "newer"],
    "properties": {
        "jobs": {"type": "array", "items": _JOB},
        "older": {"type": ["string", "null"], "description": "cursor: pass as before="},
        "newer": {"type": ["string", "null"], "description": "cursor: pass as after="},
        "note": {"type": ["string", "null"]},
    },
}


def _get(summary: str, params: list[Any] | None = None, ok: Any = None) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "parameters": params or [],
            "responses": {
                "200": _ok(ok),
                "400": _ERR,
                "401": _ERR,
                "403": _ERR,
                "404": _ERR,
                "503": _ERR,
            },
        }
    }


def _post(summary: str, params: list[Any], body: dict[str, Any] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "parameters": params,
        "responses": {
            "200": _ok(),
            "400": _ERR,
            "401": _ERR,
            "403": _ERR,
            "404": _ERR,
            "409": _ERR,
            "503": _ERR,
        },
    }
    if body is not None:
        op["requestBody"] = {"required": False, "content": {"application/json": {"schema": body}}}
    return {"post": op}


def document(title: str, root: str = "") -> dict[str, Any]:
    """The OpenAPI document (paths relative to the dashboard's root ``root``)."""
    job_id = _param("job_id", "path", _ID, "a job id")
    name = _param(
        "name", "path", {"type": "string", "pattern": "^[^\\x00-\\x1f\\x7f/]{1,200}$"}, "name"
    )
    group_body = {
        "type": "object",
        "required": ["error_code"],
        "properties": {"error_code": _NAME, "queue": _NAME},
    }
    jobs_params = [
        _param("state", "query", {"type": "string", "enum": [s.value for s in JobState]}, "state"),
        _param("queue", "query", _NAME, "queue name"),
        _param("task", "query", _NAME, "task name"),
        _param("error_code", "query", _NAME, "last error's code"),
        _param("q", "query", _NAME, "job id, idempotency key, or metadata key=value"),
        _param("before", "query", _CURSOR, "cursor: jobs older than this id"),
        _param("after", "query", _CURSOR, "cursor: jobs newer than this id (ignored with before)"),
        _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 500}, "page size"),
    ]
    paths = {
        "/api/overview": _get("Counts, throughput, health and workers in one call"),
        "/api/counts": _get("Jobs by queue and state (exact up to the cap)"),
        "/api/throughput": _get(
            "Outcomes per hour over the last hours, with the failure rate",
            [_param("hours", "query", {"type": "integer", "minimum": 1, "maximum": 48}, "hours")],
        ),
        "/api/health": _get("Store reachability and latency"),
        "/api/jobs": _get("A page of jobs, newest first (keyset cursors)", jobs_params, _PAGE),
        "/api/jobs/{job_id}": _get("One job with arguments, result, logs, timeline", [job_id]),
        "/api/jobs/{job_id}/retry": _post("Re-queue a failed, cancelled or expired job", [job_id]),
        "/api/jobs/{job_id}/cancel": _post("Cancel a waiting or running job", [job_id]),
        "/api/jobs/{job_id}/delete": _post("Delete a finished job", [job_id]),
        "/api/dead-letters": _get(
            "Dead letters grouped by error code", [_param("queue", "query", _NAME, "queue")]
        ),
        "/api/dead-letters/retry": _post("Re-queue a group's dead letters", [], group_body),
        "/api/dead-letters/purge": _post("Delete a group's dead letters", [], group_body),
        "/api/schedules": _get("Every schedule with its next run"),
        "/api/schedules/{name}": _get("One schedule and its history", [name]),
        "/api/schedules/{name}/pause": _post("Pause a schedule", [name]),
        "/api/schedules/{name}/resume": _post("Resume a schedule", [name]),
        "/api/schedules/{name}/trigger": _post("Run a schedule now", [name]),
        "/api/workers": _get("Workers with their stats, heartbeats and current jobs"),
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": f"{title} dashboard API", "version": "1"},
        "servers": [{"url": root or "/"}],
        "security": [{"basic": []}, {"session": []}],
        "components": {
            "securitySchemes": {
                "basic": {"type": "http", "scheme": "basic"},
                "session": {"type": "apiKey", "in": "cookie", "name": "conveyor_session"},
            }
        },
        "paths": paths,
    }
