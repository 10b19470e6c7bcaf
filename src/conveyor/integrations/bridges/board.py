"""Bridge status in the store, so ``conveyor stats`` (another process) can show it.

A running bridge reports :class:`~conveyor.integrations.bridges.base.BridgeStatus` (broker,
redacted URL, connected, counters, last error) under the key-value capability, namespace
``bridges``, every few seconds; :func:`read_statuses` reads them back with their age.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from conveyor.backends.capabilities import KeyValueStore
from conveyor.core.ports import AppPort
from conveyor.integrations.bridges.base import Bridge

NAMESPACE = "bridges"


async def report(app: AppPort, bridge: Bridge, role: str = "out") -> None:
    """Store ``bridge``'s current status (no-op on a store without the key-value capability)."""
    backend = await app.backend()
    if not isinstance(backend, KeyValueStore):
        return
    status = bridge.status()
    record = {**status.to_dict(), "role": role, "reported_at": time.time()}
    key = f"{status.name}:{role}"
    value = json.dumps(record, sort_keys=True).encode()
    for _ in range(5):
        current = await backend.kv_get(NAMESPACE, key)
        if await backend.kv_swap(NAMESPACE, key, current, value):
            return


async def report_forever(
    app: AppPort, bridge: Bridge, role: str = "out", interval: float = 5.0
) -> None:
    """Report every ``interval`` seconds until cancelled (errors are ignored: reporting must
    never stop a bridge)."""
    while True:
        with contextlib.suppress(Exception):
            await report(app, bridge, role)
        await asyncio.sleep(interval)


async def read_statuses(backend: object) -> list[dict[str, Any]]:
    """Every reported bridge status, with ``age`` in seconds since its report."""
    if not isinstance(backend, KeyValueStore):
        return []
    now = time.time()
    out = []
    for raw in (await backend.kv_list(NAMESPACE)).values():
        record = json.loads(raw)
        record["age"] = max(0.0, now - float(record.get("reported_at", now)))
        out.append(record)
    return sorted(out, key=lambda r: (r.get("name", ""), r.get("role", "")))
