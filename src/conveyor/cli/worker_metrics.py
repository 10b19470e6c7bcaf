"""Prometheus metrics for ``conveyor worker --metrics-port`` (the ``conveyor[web]`` extra).

One process: the worker's metrics on their own registry, served on the port. With
``--processes N``: the supervisor makes (or wipes) a ``PROMETHEUS_MULTIPROC_DIR``, tells its
children through ``CONVEYOR_WORKER_METRICS=1`` to record into it, and serves the sum.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import tempfile
from typing import Any

import click

CHILD_FLAG = "CONVEYOR_WORKER_METRICS"
MULTIPROC = "PROMETHEUS_MULTIPROC_DIR"


def _web() -> Any:
    try:
        from conveyor.web import metrics
    except ImportError as exc:
        raise click.ClickException(f"{exc}") from None
    return metrics


def serve_for_children(port: int, host: str) -> None:
    """In the supervisor: prepare the shared directory, then serve the summed metrics."""
    directory = os.environ.get(MULTIPROC)
    if directory:
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory, exist_ok=True)
    else:
        directory = tempfile.mkdtemp(prefix="conveyor-metrics-")
        atexit.register(shutil.rmtree, directory, True)
    os.environ[MULTIPROC] = directory
    os.environ[CHILD_FLAG] = "1"
    _web().serve_multiprocess(port, host)


def attach(worker: Any, port: int | None, host: str) -> asyncio.Task[None] | None:
    """Record ``worker``'s metrics when asked (a port, or a supervised child); returns the
    slot-sampling task to cancel at shutdown."""
    child = os.environ.get(CHILD_FLAG) == "1" and os.environ.get(MULTIPROC)
    if port is None and not child:
        return None
    if port is not None and os.environ.get(MULTIPROC):
        # Set by the user for one process too: values go to files, served from there.
        os.makedirs(os.environ[MULTIPROC], exist_ok=True)
    metrics = _web()
    recorder = metrics.WorkerMetrics()
    recorder.attach(worker)
    if child:
        from prometheus_client import multiprocess

        atexit.register(multiprocess.mark_process_dead, os.getpid())
    elif os.environ.get(MULTIPROC):
        assert port is not None
        metrics.serve_multiprocess(port, host)
    else:
        assert port is not None
        recorder.serve(port, host)
    return asyncio.get_running_loop().create_task(recorder.run_sampler(worker))
