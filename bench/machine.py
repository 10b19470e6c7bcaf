"""The machine and server description every result file carries."""

from __future__ import annotations

import os
import platform
import shutil
import sqlite3
import subprocess
from typing import Any


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gb() -> float:
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return 0.0


def _command(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return "not installed"
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""


def describe(redis_url: str, pg_url: str) -> dict[str, Any]:
    """CPU, cores, RAM, kernel, Python and the store servers' versions."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gb": round(_memory_gb(), 1),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "sqlite3_cli": _command(["sqlite3", "--version"]),
        "load_average": os.getloadavg(),
    }
    try:
        import redis

        client = redis.Redis.from_url(redis_url)
        server = client.info("server")
        info["redis"] = server.get("redis_version", "unknown")
        info["redis_persistence"] = {
            "appendonly": client.config_get("appendonly").get("appendonly"),
            "save": client.config_get("save").get("save"),
        }
        client.close()
    except Exception as exc:  # noqa: BLE001 - describe what we can
        info["redis"] = f"unavailable ({exc})"
    try:
        import psycopg

        with psycopg.connect(pg_url, autocommit=True) as conn:
            info["postgres"] = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
            settings = {}
            for name in ("fsync", "synchronous_commit", "shared_buffers", "max_connections"):
                settings[name] = conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
            info["postgres_settings"] = settings
    except Exception as exc:  # noqa: BLE001
        info["postgres"] = f"unavailable ({exc})"
    return info
