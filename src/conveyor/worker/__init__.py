"""The worker: claim loop, executors (async / thread / process), leases and heartbeats,
maintenance (stall recovery, retention) and signal handling."""

from conveyor.worker.worker import Worker, WorkerConfig

__all__ = ["Worker", "WorkerConfig"]
