"""RQ: ``Queue.enqueue``, ``Queue.enqueue_many``, ``Job.latest_result``, ``rq worker``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.adapters.base import Adapter as Base
from bench.common import WorkerSpec

#: Worker set-ups tried for the "natural best" on two cores (``python -m bench.sweep``).
VARIANTS = {
    "simple": ["worker", "-w", "rq.worker.SimpleWorker"],
    "fork": ["worker"],
    "pool2-simple": ["worker-pool", "-n", "2", "-w", "rq.worker.SimpleWorker"],
    "pool4-simple": ["worker-pool", "-n", "4", "-w", "rq.worker.SimpleWorker"],
    "pool2-fork": ["worker-pool", "-n", "2"],
}
DEFAULTS = {"c1": "simple", "high": "simple"}


class Adapter(Base):
    name = "rq"
    distribution = "rq"
    bulk_note = "Queue.enqueue_many (one pipeline per batch)"
    results = True
    result_note = "Job.latest_result(timeout=…) (blocking XREAD)"

    def setup(self) -> None:
        from redis import Redis
        from rq import Queue

        from bench.apps import rq_tasks

        self.conn = Redis.from_url(self.store.url)
        self.queue = Queue(self.store.ns, connection=self.conn)
        self.tasks = {"noop": rq_tasks.noop, "echo": rq_tasks.echo, "blob": rq_tasks.blob}

    def close(self) -> None:
        self.conn.close()

    def enqueue(self, task: str, arg: Any) -> None:
        self.queue.enqueue(self.tasks[task], arg)

    def enqueue_batch(self, task: str, args: Sequence[Any]) -> None:
        from rq import Queue

        fn = self.tasks[task]
        self.queue.enqueue_many([Queue.prepare_data(fn, (a,)) for a in args])

    def roundtrip(self, x: str) -> Any:
        job = self.queue.enqueue(self.tasks["echo"], x)
        result = job.latest_result(timeout=30)
        return None if result is None else result.return_value

    def worker(self, mode: str) -> WorkerSpec:
        name = self.spec.get("variant") or DEFAULTS[mode]
        args = VARIANTS[name]
        argv = [self.cli("rq"), *args, "-u", self.store.url, "-q", self.store.ns]
        return WorkerSpec(argv, f"rq {' '.join(args)}")
