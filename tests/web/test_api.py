"""The dashboard's pages, JSON API and actions on every backend: access control, read-only
mode, redaction, CSRF, bad input, keyset paging."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from conveyor import Conveyor
from conveyor.domain.states import JobState
from conveyor.web import dashboard

from .apps import SECRET_CARD, SECRET_TOKEN
from .conftest import BASIC, PASSWORD, client, config

PAGES = ["/", "/jobs", "/dead-letters", "/schedules", "/schedules/nightly-report", "/workers"]
API_GETS = [
    "/api/overview",
    "/api/counts",
    "/api/throughput",
    "/api/health",
    "/api/jobs",
    "/api/dead-letters",
    "/api/schedules",
    "/api/schedules/nightly-report",
    "/api/workers",
    "/api/openapi.json",
]


def posts(ids: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """Every mutation, as (path, JSON body)."""
    group = {"error_code": "error"}
    return [
        (f"/api/jobs/{ids['failed']}/retry", {}),
        (f"/api/jobs/{ids['queued']}/cancel", {}),
        (f"/api/jobs/{ids['cancelled']}/delete", {}),
        ("/api/dead-letters/retry", group),
        ("/api/dead-letters/purge", group),
        ("/api/schedules/nightly-report/pause", {}),
        ("/api/schedules/nightly-report/resume", {}),
        ("/api/schedules/nightly-report/trigger", {}),
        (f"/actions/jobs/{ids['failed']}/retry", {}),
        (f"/actions/jobs/{ids['queued']}/cancel", {}),
        (f"/actions/jobs/{ids['cancelled']}/delete", {}),
        ("/actions/dead-letters/retry", group),
        ("/actions/dead-letters/purge", group),
        ("/actions/schedules/nightly-report/pause", {}),
        ("/actions/schedules/nightly-report/trigger", {}),
    ]


async def test_every_page_and_read_route_answers(
    api: httpx.AsyncClient, ids: dict[str, str]
) -> None:
    for path in [*PAGES, *API_GETS, f"/jobs/{ids['failed']}", f"/api/jobs/{ids['completed']}"]:
        r = await api.get(path)
        assert r.status_code == 200, (path, r.text[:300])
        assert r.headers["content-security-policy"].startswith("default-src 'self'")
        assert r.headers["x-frame-options"] == "DENY"
    overview = (await api.get("/api/overview")).json()
    totals = overview["counts"]["totals"]
    assert totals["failed"] == 1 and totals["completed"] == 1 and totals["queued"] == 1
    assert totals["scheduled"] == 1 and totals["cancelled"] == 1
    assert overview["counts"]["queues"]["reports"]["oldest_queued_age"] is not None
    assert overview["throughput"]["totals"]["succeeded"] == 1
    assert overview["throughput"]["totals"]["dead"] == 1
    assert overview["health"]["ok"] is True
    job = (await api.get(f"/api/jobs/{ids['failed']}")).json()
    assert job["error"]["code"] == "error" and "smtp refused" in job["error"]["traceback"]
    assert job["timeline"][0]["event"] == "enqueued"
    groups = (await api.get("/api/dead-letters")).json()["groups"]
    assert [(g["code"], g["count"]) for g in groups] == [("error", 1)]
    [schedule] = (await api.get("/api/schedules")).json()["schedules"]
    assert schedule["name"] == "nightly-report" and schedule["next_run"] is not None


async def test_unauthenticated_requests_are_refused_everywhere(
    app: Conveyor, ids: dict[str, str]
) -> None:
    asgi = dashboard(app, config())
    async with client(asgi) as anon:
        for path in [*PAGES, f"/jobs/{ids['failed']}"]:
            r = await anon.get(path)
            assert r.status_code == 303 and "/login?next=" in r.headers["location"], path
        for path in [*API_GETS, f"/api/jobs/{ids['failed']}", "/live", "/metrics"]:
            r = await anon.get(path)
            assert r.status_code == 401, path
            assert SECRET_CARD not in r.text
        for path, body in posts(ids):
            r = await anon.post(path, json=body)
            assert r.status_code in (401, 403), path
        wrong = {"Authorization": "Basic b3BzOndyb25n"}  # ops:wrong
        assert (await anon.get("/api/jobs", headers=wrong)).status_code == 401
        # Health probes stay open.
        assert (await anon.get("/healthz")).status_code == 200
        assert (await anon.get("/readyz")).json() == {"ok": True}
    record = await (await app.backend()).get_job(ids["failed"])
    assert record is not None and record.state is JobState.FAILED


async def test_read_only_mode_refuses_every_action(app: Conveyor, ids: dict[str, str]) -> None:
    async with client(dashboard(app, config(read_only=True)), **BASIC) as c:
        for path, body in posts(ids):
            r = await c.post(path, json=body)
            assert r.status_code == 403, path
        page = await c.get(f"/jobs/{ids['failed']}")
        assert page.status_code == 200 and "read-only" in page.text
        assert re.search(r"<button[^>]*disabled[^>]*>Retry", page.text)
    backend = await app.backend()
    for name, job_id in ids.items():
        record = await backend.get_job(job_id)
        assert record is not None and record.state.value == name
    assert not (await app.schedules.get("nightly-report")).paused


async def test_redacted_fields_never_leave_the_server(
    api: httpx.AsyncClient, ids: dict[str, str]
) -> None:
    bodies = []
    for path in [
        *PAGES,
        *API_GETS,
        f"/jobs/{ids['completed']}",
        f"/api/jobs/{ids['completed']}",
        "/jobs?task=billing.charge",
        "/api/jobs?task=billing.charge",
        f"/api/jobs?q={ids['completed']}",
    ]:
        r = await api.get(path)
        assert r.status_code == 200, path
        bodies.append(r.text)
    text = "\n".join(bodies)
    assert SECRET_CARD not in text and SECRET_TOKEN not in text
    job = (await api.get(f"/api/jobs/{ids['completed']}")).json()
    assert job["args"] == ["acct-1", "•••"] and job["result"]["token"] == "•••"
    assert job["kwargs"] == {"amount": 5} and job["result"]["amount"] == 5
    assert "•••" in (await api.get(f"/jobs/{ids['completed']}")).text


async def test_actions_change_the_store(
    api: httpx.AsyncClient, app: Conveyor, ids: dict[str, str]
) -> None:
    backend = await app.backend()

    async def state(name: str) -> str:
        record = await backend.get_job(ids[name])
        return "deleted" if record is None else record.state.value

    r = await api.post(f"/api/jobs/{ids['failed']}/retry", json={})
    assert r.status_code == 200 and await state("failed") == "queued"
    again = await api.post(f"/api/jobs/{ids['failed']}/retry", json={})
    assert again.status_code == 409 and "only failed" in again.json()["error"]
    r = await api.post(f"/api/jobs/{ids['queued']}/cancel", json={})
    assert r.json()["outcome"] == "cancelled" and await state("queued") == "cancelled"
    assert (await api.post(f"/api/jobs/{ids['scheduled']}/delete", json={})).status_code == 409
    r = await api.post(f"/api/jobs/{ids['cancelled']}/delete", json={})
    assert r.status_code == 200 and await state("cancelled") == "deleted"
    r = await api.post("/api/schedules/nightly-report/pause", json={})
    assert r.status_code == 200 and (await app.schedules.get("nightly-report")).paused
    r = await api.post("/api/schedules/nightly-report/trigger", json={})
    assert r.status_code == 200 and await backend.get_job(r.json()["job_id"]) is not None
    r = await api.post("/api/schedules/nightly-report/resume", json={})
    assert not (await app.schedules.get("nightly-report")).paused
    r = await api.post("/api/dead-letters/purge", json={"error_code": "error"})
    assert r.status_code == 200 and r.json()["purged"] == 0  # the dead letter was retried
    assert (await api.post("/api/schedules/nope/pause", json={})).status_code == 404
    assert (await api.post(f"/api/jobs/{ids['queued']}/explode", json={})).status_code == 404


async def test_login_session_and_csrf(app: Conveyor, ids: dict[str, str]) -> None:
    async with client(dashboard(app, config())) as c:
        page = await c.get("/login?next=/dead-letters")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf is not None
        bad = await c.post(
            "/login", data={"username": "ops", "password": "nope", "csrf": csrf[1], "next": "/"}
        )
        assert bad.status_code == 401 and "wrong user name or password" in bad.text
        nocsrf = await c.post("/login", data={"username": "ops", "password": PASSWORD})
        assert nocsrf.status_code == 403
        ok = await c.post(
            "/login",
            data={"username": "ops", "password": PASSWORD, "csrf": csrf[1], "next": "//evil"},
        )
        assert ok.status_code == 303 and ok.headers["location"] == "/"
        cookie = ok.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("Lax", "lax")
        job_page = await c.get(f"/jobs/{ids['failed']}")
        assert job_page.status_code == 200
        token = re.search(r'name="csrf" value="([^"]+)"', job_page.text)
        assert token is not None
        path = f"/actions/jobs/{ids['failed']}/retry"
        # A form post without the token, or from another site, changes nothing.
        assert (await c.post(path, data={})).status_code == 403
        cross = await c.post(
            path, data={"csrf": token[1]}, headers={"Sec-Fetch-Site": "cross-site"}
        )
        assert cross.status_code == 403
        other = await c.post(path, data={"csrf": token[1]}, headers={"Origin": "http://evil.test"})
        assert other.status_code == 403
        # A JSON call riding on the session cookie needs the token too.
        assert (await c.post(f"/api/jobs/{ids['failed']}/retry", json={})).status_code == 403
        done = await c.post(path, data={"csrf": token[1], "next": f"/jobs/{ids['failed']}"})
        assert done.status_code == 303 and done.headers["location"] == f"/jobs/{ids['failed']}"
        after = await c.get(done.headers["location"])
        assert "re-queued" in after.text
        record = await (await app.backend()).get_job(ids["failed"])
        assert record is not None and record.state is JobState.QUEUED
        out = await c.post("/logout", data={"csrf": token[1]})
        assert out.status_code == 303
        assert (await c.get("/")).status_code == 303


@pytest.mark.parametrize(
    "path",
    [
        "/api/jobs/%00bad",
        "/api/jobs/" + "x" * 300,
        "/api/jobs?state=bogus",
        "/api/jobs?limit=0",
        "/api/jobs?limit=99999999999999999999",
        "/api/jobs?limit=abc",
        "/api/jobs?before=%27%20OR%201%3D1--",
        "/api/jobs?queue=%00",
        "/api/jobs?q=" + "y" * 500,
        "/api/throughput?hours=100000",
        "/api/throughput?hours=-1",
        "/jobs?state=nope",
        "/jobs?before=../../etc",
        "/jobs/%3Cscript%3E",
    ],
)
async def test_bad_input_is_a_clear_4xx(api: httpx.AsyncClient, path: str) -> None:
    r = await api.get(path)
    assert 400 <= r.status_code < 500, (path, r.status_code, r.text[:200])


async def test_injection_in_filters_finds_nothing_and_is_escaped(api: httpx.AsyncClient) -> None:
    for value in ["' OR 1=1 --", '"; DROP TABLE jobs; --', "*", "<script>alert(1)</script>"]:
        r = await api.get("/api/jobs", params={"queue": value})
        assert r.status_code == 200 and r.json()["jobs"] == []
        page = await api.get("/jobs", params={"task": value})
        assert page.status_code == 200 and "<script>alert" not in page.text


async def test_keyset_paging_through_the_api(api: httpx.AsyncClient, app: Conveyor) -> None:
    report = app.tasks["reports.build"]
    await app.enqueue_many([report.call(i) for i in range(7)])
    seen: list[str] = []
    url = "/api/jobs?state=queued&limit=3"
    pages = 0
    while True:
        data = (await api.get(url)).json()
        seen += [j["id"] for j in data["jobs"]]
        pages += 1
        if data["older"] is None:
            break
        url = f"/api/jobs?state=queued&limit=3&before={data['older']}"
    assert len(seen) == 8 and seen == sorted(seen, reverse=True) and pages == 3
    back = (await api.get(f"/api/jobs?state=queued&limit=3&after={seen[3]}")).json()
    assert [j["id"] for j in back["jobs"]] == seen[:3]
    huge = (await api.get("/api/jobs?before=" + "0" * 10)).json()
    assert huge["jobs"] == [] and huge["older"] is None


async def test_search_by_id_key_and_metadata(
    api: httpx.AsyncClient, app: Conveyor, ids: dict[str, str]
) -> None:
    by_id = (await api.get("/api/jobs", params={"q": ids["failed"]})).json()["jobs"]
    assert [j["id"] for j in by_id] == [ids["failed"]]
    by_key = (await api.get("/api/jobs", params={"q": "report-key-1"})).json()
    assert [j["id"] for j in by_key["jobs"]] == [ids["scheduled"]]
    tagged = await app.tasks["reports.build"].options(metadata={"tenant": "acme"}).enqueue(9)
    meta = (await api.get("/api/jobs", params={"q": "tenant=acme"})).json()
    assert [j["id"] for j in meta["jobs"]] == [tagged.id] and "metadata" in meta["note"]
    none = (await api.get("/api/jobs", params={"q": "no-such-thing"})).json()
    assert none["jobs"] == []
