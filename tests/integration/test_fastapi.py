"""FastAPI integration against the real thing: the example app served by uvicorn in its own
process, called over HTTP with httpx; its lifespan runs a worker in the server's loop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    env = {**os.environ, "CONVEYOR_URL": f"sqlite:///{tmp_path}/jobs.db", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "examples.fastapi_app.main:api",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "info"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                httpx.get(f"{base}/jobs/none", timeout=1.0)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    out, _ = proc.communicate(timeout=10)
                    pytest.fail(f"uvicorn did not start: {out.decode()}")
                time.sleep(0.05)
        yield base
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate(timeout=10)
    # uvicorn re-raises SIGTERM after a graceful shutdown; the lifespan must have completed.
    text = out.decode()
    assert "Application shutdown complete" in text, text
    assert "Traceback" not in text, text


def test_enqueue_over_http_and_the_lifespan_worker_runs_the_job(server: str) -> None:
    with httpx.Client(base_url=server, timeout=5.0) as client:
        created = client.post("/signups", json={"email": "ada@example.com", "plan": "pro"})
        assert created.status_code == 202, created.text
        job_id = created.json()["job"]
        deadline = time.monotonic() + 20
        while True:
            body = client.get(f"/jobs/{job_id}").json()
            if body["state"] == "completed" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert body == {
            "id": job_id,
            "state": "completed",
            "result": {"to": "ada@example.com", "text": "Welcome to the pro plan"},
        }
        refused = client.post("/signups", json={"plan": "pro"})
        assert refused.status_code == 422  # FastAPI's own validation of the body
        missing = client.get("/jobs/no-such-job")
        assert missing.status_code == 404 and "no-such-job" in missing.json()["detail"]
