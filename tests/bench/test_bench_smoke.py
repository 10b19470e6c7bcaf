"""The benchmark harness at smoke sizes fills every cell, so ``make bench`` never rots.

It runs ``python -m bench.harness --smoke`` for Conveyor (and its floor rows) on all three
backends, plus any peer library importable in this interpreter (peers normally live in
``bench/.venv-*``; ``BENCH_SMOKE_PEERS=1`` adds every peer whose environment exists). Each
expected cell must hold a positive number or a marked reason; speed is never asserted.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.adapters import LIBRARIES, PEERS  # noqa: E402
from bench.plan import FLOOR_LIBS, ROWS  # noqa: E402

from tests.support import in_ci  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
BACKENDS = ("redis", "postgres", "sqlite")


def require(port: int, name: str) -> None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2.0):
            return
    except OSError:
        message = f"{name} at 127.0.0.1:{port} is unreachable"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)


def peers_to_include() -> list[str]:
    every = sorted({lib for libs in PEERS.values() for lib in libs})
    if os.environ.get("BENCH_SMOKE_PEERS") == "1":
        return every
    return [lib for lib in every if importlib.util.find_spec(LIBRARIES[lib].probe) is not None]


def expected_cells(libs: list[str]) -> list[tuple[str, str, str]]:
    cells = []
    for backend in BACKENDS:
        for row in ROWS:
            for lib in libs:
                if lib == "conveyor" or lib in PEERS[backend]:
                    cells.append((backend, row.key, lib))
            if row.floors:
                cells += [(backend, row.key, lib) for lib in FLOOR_LIBS]
    return cells


def filled(entry: dict[str, Any], metric: str) -> bool:
    """A positive number, or a marked reason (never a silent gap)."""
    if "reason" in entry:
        return bool(entry["reason"])
    value = entry.get("metrics", {}).get(metric, {}).get("median")
    return value is not None and not math.isnan(value) and value > 0


def test_smoke_run_fills_every_cell(tmp_path: Path) -> None:
    require(6379, "Redis")
    require(5432, "PostgreSQL")
    libs = ["conveyor", *peers_to_include()]
    output = tmp_path / "smoke.json"
    argv = [sys.executable, "-m", "bench.harness", "--smoke", "--quiet"]
    argv += ["--libs", ",".join(libs), "--redis-db", "13", "--output", str(output)]
    run = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=840, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    data = json.loads(output.read_text())

    missing = []
    for backend, key, lib in expected_cells(libs):
        row = next(r for r in ROWS if r.key == key)
        entry = data["results"].get(backend, {}).get(key, {}).get(lib)
        if entry is None or not filled(entry, row.metric):
            missing.append(f"{backend}/{key}/{lib}: {entry}")
    assert not missing, "\n".join(missing)

    for backend in BACKENDS:
        limits = data["limits"][backend]
        assert "error" not in limits, limits
        assert limits["entries"], backend
        assert all(e["value"] and e["value"] > 0 for e in limits["entries"]), limits
    for backend in BACKENDS:  # the event bus rows next to the store's floor (bench/bus.py)
        bus = data["bus"][backend]
        assert "error" not in bus, bus
        assert bus["rows"] and bus["floors"], bus
        assert all(e["value"] and e["value"] > 0 for e in bus["rows"] + bus["floors"]), bus
    integrations = data["integrations"]
    assert "error" not in integrations, integrations
    names = {e["name"] for e in integrations["rows"]}
    assert "webhook deliveries (signed, SSRF-guarded, logged)" in names
    assert any(n.startswith("SSE fan-out to 100 clients") for n in names)
    for e in integrations["rows"]:  # a number, or a marked reason (a broker not reachable)
        assert e.get("reason") or (e["value"] and e["value"] > 0), e
    rows = {(c["backend"], c["row"]) for c in data["comparisons"]}
    assert {(b, "process_high") for b in BACKENDS} <= rows
    assert data["meta"]["machine"]["cores"]

    # The scale-out rows (bench/scaleout.py): one cell of each kind at smoke sizes.
    scale = data["scaleout"]
    assert [v["median"] for r in scale["processes"].values() for v in r.values()], scale
    bouncer = scale["pgbouncer"]
    if "reason" in bouncer and not in_ci():
        return
    entry = bouncer["process_high"]
    assert entry["direct"]["median"] > 0 and entry["pgbouncer"]["median"] > 0, bouncer
