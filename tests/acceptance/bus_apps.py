"""The event-bus app the acceptance and reliability tests run in real worker processes.

Loaded as ``tests.acceptance.bus_apps:from_env`` with the environment of
:mod:`tests.acceptance.apps` (store URL, backend options, ledger, lease settings). Its handlers
append to the ledger: ``handled`` lines (event id, subscription, key, sequence number) are the
tests' record of what ran.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from conveyor import Conveyor, RetryPolicy

from .apps import ENV_HEARTBEAT, ENV_LEASE, ENV_MAX_STALLS, ENV_OPTIONS, ENV_URL, record

APP_PATH = "tests.acceptance.bus_apps:from_env"


def build_bus_app(
    url: str,
    *,
    backend_options: dict[str, Any] | None = None,
    lease: float = 2.0,
    heartbeat: float = 0.5,
    max_stalls: int = 1,
) -> Conveyor:
    app = Conveyor(
        url,
        lease=lease,
        heartbeat_interval=heartbeat,
        max_stalls=max_stalls,
        backend_options=backend_options,
    )
    app.bus.configure({"queue": {"concurrency": 8}, "settle_interval": 0.5})
    quick = RetryPolicy.build(3, backoff="fixed", delay=0, jitter=False)
    patient = RetryPolicy.build(50, delay=0.05)

    @app.bus.subscribe("order.#", name="ledger", retry=patient)
    def ledger(event: Any) -> None:
        """Notes every event it handles; works ``ms`` milliseconds first (in a thread)."""
        ms = event.data.get("ms", 0) if isinstance(event.data, dict) else 0
        if ms:
            time.sleep(ms / 1000)
        record(
            "handled",
            sub="ledger",
            event_id=event.id,
            key=event.key,
            n=event.data.get("n") if isinstance(event.data, dict) else None,
        )

    @app.bus.subscribe(
        "order.#", name="audit", ordered=False, retry=RetryPolicy.build(50, delay=0.05)
    )
    async def audit(event: Any) -> None:
        record("handled", sub="audit", event_id=event.id, key=event.key)

    @app.bus.subscribe("order.#", name="flaky", where={"fail": True}, retry=quick)
    async def flaky(event: Any) -> None:
        record("handled", sub="flaky", event_id=event.id)
        raise RuntimeError("flaky handler")

    return app


def from_env() -> Conveyor:
    return build_bus_app(
        os.environ[ENV_URL],
        backend_options=json.loads(os.environ.get(ENV_OPTIONS) or "{}") or None,
        lease=float(os.environ.get(ENV_LEASE, "2")),
        heartbeat=float(os.environ.get(ENV_HEARTBEAT, "0.5")),
        max_stalls=int(os.environ.get(ENV_MAX_STALLS, "1")),
    )
