"""Ambiguous acknowledgements (T8, "mid-ack"): the store acted, its reply was lost.

The client reaches the shared server through the test's TCP proxy, which throws away the next
reply and resets that connection, so a fenced write (complete, fail, release) takes effect
while the caller sees a dropped connection. The worker repeats such a write (``JobRunner._store``
retries until it gets an answer; redis-py retries by itself), so the contract that matters is:
**repeating a fenced write that already took effect under the same fence reports success**,
the way the PostgreSQL completion already does ("completed under our fence means it was us").
Otherwise the worker believes it lost the lease: it logs a false ``lease lost``, counts it,
and never emits the ``completed`` / ``failed`` / ``retrying`` / ``dead`` events for an outcome
that was in fact stored, so listeners (webhooks, alerts on dead jobs, metrics) miss it.

SQLite runs in-process: there is no reply to lose.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from conveyor.backends import Backend, factory_from_url
from conveyor.domain.ids import new_job_id
from conveyor.domain.job import ErrorInfo, NewJob
from conveyor.domain.states import JobState
from conveyor.errors import StorageUnavailableError
from tests.acceptance.conftest import require_kind
from tests.support.servers import TcpProxy

from .conftest import Results

PORTS = {"postgres": 5432, "redis": 6379}

OPS = ("complete", "fail_dead", "fail_retry", "release")


def _cases() -> list[Any]:
    return [
        pytest.param(kind, op, id=f"{kind}-{op}") for kind in ("postgres", "redis") for op in OPS
    ]


@pytest.fixture
async def proxied(
    tmp_path: Any, tcp_proxy: Callable[[int], TcpProxy], request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Backend, TcpProxy]]:
    kind = request.node.callspec.params["kind"]
    await require_kind(kind, tmp_path)
    proxy = tcp_proxy(PORTS[kind])
    if kind == "postgres":
        url = f"postgresql://postgres@127.0.0.1:{proxy.port}/test"
        options = {"schema": f"rel_{uuid.uuid4().hex[:12]}"}
    else:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        options = {"prefix": f"rel{uuid.uuid4().hex[:12]}"}
    factory = factory_from_url(url, **options)
    await factory.migrate()
    backend = factory.create()
    await backend.open()
    try:
        yield backend, proxy
    finally:
        await backend.close()
        await factory.destroy()


async def _write(backend: Backend, op: str, job_id: str, fence: int) -> Any:
    error = ErrorInfo("error", "RuntimeError", "boom", attempt=1, at=0.0)
    if op == "complete":
        return await backend.complete(job_id, fence, b'"done"')
    if op == "fail_dead":
        return await backend.fail(job_id, fence, error, retry_delay=None)
    if op == "fail_retry":
        return await backend.fail(job_id, fence, error, retry_delay=0)
    return await backend.release(job_id, fence)


EXPECTED = {
    "complete": (True, JobState.COMPLETED),
    "fail_dead": (JobState.FAILED, JobState.FAILED),
    "fail_retry": (JobState.QUEUED, JobState.QUEUED),
    "release": (True, JobState.QUEUED),
}


@pytest.mark.parametrize(("kind", "op"), _cases())
async def test_a_fenced_write_whose_reply_was_lost_reports_its_outcome(
    proxied: tuple[Backend, TcpProxy], kind: str, op: str
) -> None:
    backend, proxy = proxied
    job_id = new_job_id()
    await backend.enqueue([NewJob(id=job_id, task="t", queue="default", payload=b"{}")])
    (claimed,) = await backend.claim("host:1:w", ["default"], 1, 30.0)
    proxy.drop_next_reply()
    try:
        answer = await _write(backend, op, job_id, claimed.fence)
    except StorageUnavailableError:
        # The backend says the call may not have taken effect: the worker repeats it.
        answer = await _write(backend, op, job_id, claimed.fence)
    assert proxy.dropped_replies == 1, "the proxy lost no reply: the test did not bite"
    record = await backend.get_job(job_id)
    assert record is not None
    want_answer, want_state = EXPECTED[op]
    assert record.state is want_state, record  # the first call took effect, exactly once
    assert len(record.errors) == (1 if op.startswith("fail") else 0), record.errors
    assert answer == want_answer, f"{op} answered {answer!r} although it took effect"


async def test_sqlite_has_no_reply_to_lose(results: Results) -> None:
    results.skip(
        "lost_reply",
        "sqlite",
        "SQLite runs in the worker's process: a write either returns or raises; no reply can "
        "be lost on a network",
    )
