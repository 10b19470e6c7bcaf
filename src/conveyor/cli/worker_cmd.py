"""``conveyor worker APP``: run a worker (or a supervised group of worker processes)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from dataclasses import replace
from typing import Any

import click

from conveyor.app import Conveyor
from conveyor.cli.common import console, load_app
from conveyor.domain.autoscale import AutoscalePolicy
from conveyor.domain.durations import format_duration
from conveyor.domain.states import JobState
from conveyor.worker.supervisor import Autoscaling, Supervisor
from conveyor.worker.worker import Worker, WorkerConfig

JOB_FIELDS = (
    "worker_id",
    "job_id",
    "task",
    "queue",
    "attempt",
    "duration",
    "error_code",
    "trace_id",
)


class _TextFormatter(logging.Formatter):
    """``time level logger message key=value…`` with the job fields every line carries."""

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = [
            f"{k}={_shown(k, getattr(record, k))}"
            for k in JOB_FIELDS
            if getattr(record, k, None) is not None
        ]
        if extras:
            first, _, rest = base.partition("\n")
            base = f"{first} [{' '.join(extras)}]" + (f"\n{rest}" if rest else "")
        return base


def _shown(key: str, value: Any) -> Any:
    """A log field as text lines show it: durations as ``5.1ms``, never ``5.08e-05``."""
    if key == "duration" and isinstance(value, int | float):
        return format_duration(float(value))
    return value


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in JOB_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                data[key] = value
        if record.exc_info:
            data["traceback"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JSONFormatter())
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger("conveyor")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


_UNITS = {"": 2**20, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20, "g": 2**30, "gb": 2**30}


def _size(text: str | None) -> int | None:
    """``512MB``, ``2GB``, ``800`` (MB) as bytes."""
    if text is None:
        return None
    raw = text.strip().lower().replace("ib", "b")
    number = raw.rstrip("kmgb")
    unit = raw[len(number) :]
    try:
        value = float(number) * _UNITS[unit]
    except (KeyError, ValueError):
        raise click.BadParameter(
            f"{text!r} is not a size (512MB, 2GB)", param_hint="--max-memory-per-child"
        ) from None
    if value < 1:
        raise click.BadParameter("must be positive", param_hint="--max-memory-per-child")
    return int(value)


def _split(values: tuple[str, ...]) -> tuple[str, ...] | None:
    items = [v.strip() for value in values for v in value.split(",") if v.strip()]
    return tuple(items) or None


@click.command()
@click.argument("app_path", metavar="APP", envvar="CONVEYOR_APP")
@click.option(
    "--queues",
    "-Q",
    "queues",
    multiple=True,
    metavar="NAMES",
    help="Queues to consume, comma-separated or repeated (default: all declared).",
)
@click.option(
    "--tasks",
    "-T",
    "tasks",
    multiple=True,
    metavar="PATTERNS",
    help="Only tasks matching these patterns ('email.*'), comma-separated or repeated.",
)
@click.option(
    "--concurrency", "-c", default=10, show_default=True, help="Jobs run at once per process."
)
@click.option(
    "--processes",
    "-p",
    default=1,
    show_default=True,
    help="Worker processes to run (supervised; crashed ones are restarted).",
)
@click.option(
    "--autoscale",
    metavar="MIN:MAX|queues",
    help="Grow and shrink supervised worker processes between MIN and MAX with the queues' "
    "load (ready jobs, oldest wait); 'queues' takes the bounds from the queues' autoscale "
    "settings. Shrinking never interrupts a running job.",
)
@click.option(
    "--grace",
    default=30.0,
    show_default=True,
    help="Seconds running jobs get to finish on SIGTERM before they are handed back.",
)
@click.option("--burst", is_flag=True, help="Exit when no job is left to claim.")
@click.option(
    "--progress", "show_progress", is_flag=True, help="With --burst: show a progress bar."
)
@click.option("--poll-interval", default=1.0, show_default=True, help="Fallback poll, seconds.")
@click.option("--url", help="Must match the app's URL if given (or $CONVEYOR_URL).")
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error", "critical"]),
)
@click.option(
    "--log-format", default="text", show_default=True, type=click.Choice(["text", "json"])
)
@click.option(
    "--max-jobs-per-child",
    type=click.IntRange(min=1),
    help="Recycle a process-mode child after this many jobs.",
)
@click.option(
    "--max-memory-per-child",
    metavar="SIZE",
    help="Recycle a process-mode child whose resident memory after a job is above SIZE "
    "(512MB, 2GB; a plain number is MB).",
)
@click.option("--worker-id", help="Stable id for this worker (default host:pid:random).")
@click.option(
    "--hostname",
    envvar="CONVEYOR_HOSTNAME",
    metavar="NAME",
    help="Host name this worker reports and starts its id with (default: the machine's; "
    "or $CONVEYOR_HOSTNAME, e.g. a Kubernetes node or pod name).",
)
@click.option("--no-scheduler", is_flag=True, help="Do not run the schedule loop in this worker.")
@click.option(
    "--metrics-port",
    type=int,
    help="Serve Prometheus metrics on this port (needs conveyor[web]); with --processes the "
    "supervisor serves the sum over its processes.",
)
@click.option("--metrics-host", default="0.0.0.0", show_default=True, help="Metrics address.")
def worker(
    app_path: str,
    queues: tuple[str, ...],
    tasks: tuple[str, ...],
    concurrency: int,
    processes: int,
    autoscale: str | None,
    grace: float,
    burst: bool,
    show_progress: bool,
    poll_interval: float,
    url: str | None,
    log_level: str,
    log_format: str,
    max_jobs_per_child: int | None,
    max_memory_per_child: str | None,
    worker_id: str | None,
    hostname: str | None,
    no_scheduler: bool,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Run a worker for APP (module:attribute, e.g. myproject.tasks:app).

    SIGTERM or Ctrl-C stops claiming, lets running jobs finish within --grace seconds and hands
    the rest back to the queue at once; a second signal hands them back immediately.
    """
    setup_logging(log_level, log_format)
    if autoscale is not None:
        if processes != 1:
            raise click.UsageError("--autoscale and --processes exclude each other")
        if burst:
            raise click.UsageError("--autoscale and --burst exclude each other")
        app = load_app(app_path, url)
        scaling = _autoscaling(app, autoscale, _split(queues), concurrency)
        if metrics_port is not None:  # the supervisor serves every process's metrics
            from conveyor.cli.worker_metrics import serve_for_children

            serve_for_children(metrics_port, metrics_host)
        raise SystemExit(asyncio.run(_supervise(Supervisor(_child_argv(), autoscaling=scaling))))
    if processes > 1:
        if metrics_port is not None:  # the supervisor serves every process's metrics
            from conveyor.cli.worker_metrics import serve_for_children

            serve_for_children(metrics_port, metrics_host)
        supervisor = Supervisor(_child_argv(), processes, burst=burst)
        raise SystemExit(asyncio.run(_supervise(supervisor)))
    app = load_app(app_path, url)
    config = WorkerConfig(
        queues=_split(queues),
        tasks=_split(tasks),
        concurrency=concurrency,
        grace=grace,
        poll_interval=poll_interval,
        burst=burst,
        worker_id=worker_id,
        hostname=hostname,
        scheduler=not no_scheduler,
        max_jobs_per_child=max_jobs_per_child,
        max_memory_per_child=_size(max_memory_per_child),
    )
    asyncio.run(_run_worker(app, config, show_progress and burst, metrics_port, metrics_host))


async def _run_worker(
    app: Conveyor,
    config: WorkerConfig,
    show_progress: bool,
    metrics_port: int | None = None,
    metrics_host: str = "0.0.0.0",
) -> None:
    w = Worker(app, config)
    # Prometheus metrics (--metrics-port, or a supervised child of a group that serves them).
    from conveyor.cli.worker_metrics import attach

    sampler = attach(w, metrics_port, metrics_host)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, w.stop)
    loop.add_signal_handler(signal.SIGUSR2, w.retire)  # the autoscaler shrinking the group
    progress_task = asyncio.create_task(_progress(app, w)) if show_progress else None
    try:
        await w.run()
    finally:
        if sampler is not None:
            sampler.cancel()
        if progress_task is not None:
            progress_task.cancel()
            try:
                await progress_task
            except asyncio.CancelledError:
                pass
        await app.close()


async def _progress(app: Conveyor, w: Worker) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]processing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        handle = bar.add_task("jobs", total=None, detail="")
        # Jobs, not attempts: a job retried three times is one job. Done = jobs that reached a
        # final state since the bar started; the rest still wait, run or back off.
        final = (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.EXPIRED)
        waiting_states = (JobState.QUEUED, JobState.RUNNING, JobState.SCHEDULED)
        start = await app.inspect.counts()
        before = sum(start.total.get(s.value, 0) for s in final)
        while True:
            counts = await app.inspect.counts()
            waiting = sum(counts.total.get(s.value, 0) for s in waiting_states)
            done = max(sum(counts.total.get(s.value, 0) for s in final) - before, 0)
            bar.update(
                handle,
                total=done + waiting,
                completed=done,
                detail=f"ok {w.stats.succeeded}  retried {w.stats.retried}  "
                f"dead {w.stats.dead}  scheduled {counts.total.get('scheduled', 0)}",
            )
            await asyncio.sleep(0.2)


def _autoscaling(
    app: Conveyor, value: str, queues: tuple[str, ...] | None, concurrency: int
) -> Autoscaling:
    """The autoscaling of ``--autoscale VALUE``: the bounds from VALUE (``MIN:MAX``) or from
    the consumed queues' ``autoscale`` settings (``queues``); the rest from those settings."""
    names = list(queues) if queues else [app.default_queue, *app.queues]
    names = list(dict.fromkeys(names))
    declared = [p for q in names if (p := app.queue_config(q).autoscale) is not None]
    merged = AutoscalePolicy.merge(declared) if declared else AutoscalePolicy()
    try:
        if value.strip().lower() == "queues":
            if not declared:
                raise click.BadParameter(
                    "no consumed queue declares autoscale settings "
                    "(app.queue(name, autoscale=...)); give MIN:MAX instead",
                    param_hint="--autoscale",
                )
            policy = merged
        else:
            lo, hi = AutoscalePolicy.parse_bounds(value)
            policy = replace(merged, min_workers=lo, max_workers=hi)  # validated again
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--autoscale") from None
    return Autoscaling(policy, app, names, concurrency)


async def _supervise(supervisor: Supervisor) -> int:
    try:
        return await supervisor.run()
    finally:
        if supervisor.autoscaling is not None:
            await supervisor.autoscaling.app.close()


def _child_argv() -> list[str]:
    """This command for one supervised child: ``--processes 1``, no ``--autoscale``."""
    return [
        sys.executable,
        "-m",
        "conveyor.cli.main",
        *_without_processes(sys.argv[1:]),
        "--processes",
        "1",
    ]


def _without_processes(args: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in ("--processes", "-p", "--autoscale"):
            skip = True
            continue
        if arg in ("--metrics-port", "--metrics-host"):  # the supervisor serves them
            skip = True
            continue
        if arg.startswith(("--processes=", "--autoscale=", "--metrics-port=", "--metrics-host=")):
            continue
        out.append(arg)
    return out
