"""Django integration against the real thing: the example project's own tests, run by
Django's test runner (``manage.py test``) on PostgreSQL and on SQLite, in a child process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from uuid import uuid4

import pytest

from tests.contract._support import require_kind

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ROOT / "examples" / "django_project"


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_the_example_project_passes_djangos_test_runner(kind: str, tmp_path: Path) -> None:
    require_kind(kind)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(PROJECT)]),
        "EXAMPLE_DB": kind,
        "EXAMPLE_DB_NAME": f"cv_{uuid4().hex[:10]}",
        "EXAMPLE_DB_DIR": str(tmp_path),
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    proc = subprocess.run(
        [sys.executable, "manage.py", "test", "shop", "--noinput", "-v", "2"],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "Ran 6 tests" in output and "\nOK" in output, output
    committed = r"test_a_job_written_in_djangos_transaction_commits_with_it \(.*\) \.\.\. ok"
    assert re.search(committed, output), output
