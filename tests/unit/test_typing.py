"""Static typing of the public API, checked by running mypy on example files.

``tests/typing/tasks_ok.py`` must pass ``mypy --strict`` (``assert_type`` on results of sync and
async tasks, handles and the sync twins); ``tests/typing/tasks_bad.py`` must fail on exactly the
lines marked ``# E`` (so the check itself can fail).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = REPO / "tests" / "typing"


def _mypy(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-error-summary",
            "--hide-error-context",
            "--cache-dir",
            str(REPO / ".mypy_cache" / "typing-tests"),
            str(path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.timeout(320)
def test_task_results_are_typed_for_sync_and_async_tasks() -> None:
    ok = _mypy(HERE / "tasks_ok.py")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = _mypy(HERE / "tasks_bad.py")
    flagged = {
        int(m.group(1)) for m in re.finditer(r"tasks_bad\.py:(\d+): error", bad.stdout)
    }
    source = (HERE / "tasks_bad.py").read_text().splitlines()
    expected = {n for n, line in enumerate(source, 1) if line.rstrip().endswith("# E")}
    assert expected and flagged == expected, bad.stdout + bad.stderr
