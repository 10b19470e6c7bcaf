"""Aggregate cells into medians, ratios to the best peer, % of the floor and target verdicts."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any

from bench.adapters import PEERS
from bench.plan import FLOOR_LIBS, ROWS, ROWS_BY_KEY, THROUGHPUT_ROWS

#: Derived rows: (key, title, source row, metric, higher is better, unit).
DERIVED = (("worker_rss", "worker RSS under load", "process_high", "rss_mb", False, "MB"),)


def aggregate(group: list[dict[str, Any]]) -> dict[str, Any]:
    """Median, min and max of every metric over a cell's iterations, or why it has none."""
    ok = [c for c in group if "metrics" in c]
    out: dict[str, Any] = {"iterations": len(group)}
    if ok:
        keys = sorted({k for c in ok for k in c["metrics"]})
        out["metrics"] = {}
        for key in keys:
            values = [float(c["metrics"][key]) for c in ok if key in c["metrics"]]
            values = [v for v in values if not math.isnan(v)]
            if values:
                out["metrics"][key] = {
                    "median": statistics.median(values),
                    "min": min(values),
                    "max": max(values),
                    "samples": values,
                }
        notes = [c["note"] for c in ok if c.get("note")]
        if notes:
            out["note"] = notes[-1]
    errors = [c["error"] for c in group if "error" in c]
    reasons = [c["reason"] for c in group if "reason" in c]
    if not ok:
        if reasons:
            out["reason"] = reasons[0]
        else:
            out["error"] = errors[0] if errors else "no result"
    elif errors:
        out["failed_iterations"] = len(errors)
        out["errors"] = errors[:2]
    return out


def value(entry: dict[str, Any] | None, metric: str) -> float | None:
    if not entry or "metrics" not in entry or metric not in entry["metrics"]:
        return None
    return float(entry["metrics"][metric]["median"])


def compare(
    results: dict[str, dict[str, dict[str, Any]]], backend: str, key: str, metric: str, higher: bool
) -> dict[str, Any] | None:
    """Conveyor against the best peer on one row (and against the floor where measured)."""
    row = results.get(backend, {}).get(key)
    if row is None:
        return None
    conveyor = value(row.get("conveyor"), metric)
    peers = {lib: value(row.get(lib), metric) for lib in PEERS[backend] if lib in row}
    measured = {lib: v for lib, v in peers.items() if v is not None and v > 0}
    out: dict[str, Any] = {"backend": backend, "row": key, "metric": metric, "conveyor": conveyor}
    if measured:
        best_lib = (max if higher else min)(measured, key=lambda lib: measured[lib])
        best = measured[best_lib]
        out.update(best_peer=best_lib, best_peer_value=best)
        if conveyor:
            out["ratio"] = conveyor / best if higher else best / conveyor
    floor = value(row.get("floor"), metric)
    if floor and conveyor is not None:
        out["floor"] = floor
        out["floor_pct"] = 100.0 * conveyor / floor
    loop = value(row.get("backend-loop"), metric)
    if loop and conveyor is not None:
        out["backend_loop"] = loop
        out["backend_loop_pct"] = 100.0 * conveyor / loop
    out["targets"] = verdicts(backend, key, out, row, measured)
    return out


def verdicts(
    backend: str,
    key: str,
    cmp: dict[str, Any],
    row: dict[str, Any],
    measured: dict[str, float],
) -> list[dict[str, Any]]:
    """Issue 7's targets that apply to this row, each met or not."""
    out: list[dict[str, Any]] = []
    ratio = cmp.get("ratio")
    if key in THROUGHPUT_ROWS and ratio is not None:
        out.append(
            {
                "target": "≥ 1.5× the best peer",
                "met": ratio >= 1.5,
                "detail": f"{ratio:.2f}× {cmp['best_peer']}"
                + ("" if ratio >= 1 else " (below the best peer)"),
            }
        )
    if key.startswith("process") and "floor_pct" in cmp:
        pct = cmp["floor_pct"]
        out.append({"target": "≥ 50% of the floor", "met": pct >= 50, "detail": f"{pct:.0f}%"})
    if key == "latency" and backend in ("redis", "postgres"):
        p99 = value(row.get("conveyor"), "p99_ms")
        p50s = {lib: value(row.get(lib), "p50_ms") for lib in measured}
        p50s = {lib: v for lib, v in p50s.items() if v is not None}
        if p99 is not None and p50s:
            best = min(p50s, key=lambda lib: p50s[lib])
            out.append(
                {
                    "target": "p99 below the best peer's p50",
                    "met": p99 < p50s[best],
                    "detail": f"p99 {p99:.2f} ms vs {best} p50 {p50s[best]:.2f} ms",
                }
            )
    return out


def build(
    meta: dict[str, Any],
    cells: list[dict[str, Any]],
    limits: dict[str, Any],
    profiles: dict[str, Any],
) -> dict[str, Any]:
    grouped: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for cell in cells:
        grouped[(cell["backend"], cell["row"], cell["lib"])].append(cell)
    results: dict[str, dict[str, dict[str, Any]]] = defaultdict(lambda: defaultdict(dict))
    for (backend, row, lib), group in grouped.items():
        results[backend][row][lib] = aggregate(group)
    comparisons = []
    for backend in results:
        for row in ROWS:
            cmp = compare(results, backend, row.key, row.metric, row.higher_is_better)
            if cmp is not None:
                comparisons.append(cmp)
        for key, _title, source, metric, higher, _unit in DERIVED:
            cmp = compare(results, backend, source, metric, higher)
            if cmp is not None:
                cmp["row"] = key
                cmp.pop("floor", None), cmp.pop("floor_pct", None)
                cmp.pop("backend_loop", None), cmp.pop("backend_loop_pct", None)
                cmp["targets"] = []
                comparisons.append(cmp)
    return {
        "meta": meta,
        "rows": {row.key: {"title": row.title, "unit": row.unit} for row in ROWS},
        "results": {b: dict(rows) for b, rows in results.items()},
        "comparisons": comparisons,
        "limits": limits,
        "profiles": profiles,
        "cells": cells,
        "floor_libs": list(FLOOR_LIBS),
    }


def title(key: str) -> str:
    if key in ROWS_BY_KEY:
        return ROWS_BY_KEY[key].title
    return next(d[1] for d in DERIVED if d[0] == key)
