"""A supervised group of worker processes: a fixed number (``conveyor worker --processes N``)
or a number that follows the load (``conveyor worker --autoscale MIN:MAX``).

The supervisor is a small process of its own: it starts single-process workers as children,
restarts one that crashes (with a growing pause when it keeps crashing), and passes SIGTERM and
SIGINT on (a first signal drains, a second hands running jobs back at once). Children get
SIGTERM if the supervisor dies (``PR_SET_PDEATHSIG`` on Linux).

Autoscaling samples the consumed queues' load (:meth:`conveyor.core.inspect.Inspector.load`)
every ``policy.interval`` seconds and applies :func:`conveyor.domain.autoscale.decide`:
growing starts children; shrinking **retires** one (SIGUSR2: it stops claiming and finishes
every running job, however long that takes, then exits), preferring an idle one as the worker
registry reports it. A scaling decision never interrupts a job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from conveyor.domain.autoscale import AutoscalePolicy, LoadSample, ScaleState, decide
from conveyor.errors import ConveyorError

if TYPE_CHECKING:
    from conveyor.app import Conveyor

log = logging.getLogger("conveyor.supervisor")

#: Seconds between two looks at the children (exits, restarts due).
TICK = 0.1


@dataclass(eq=False)
class Child:
    """One worker process of the group."""

    index: int
    popen: subprocess.Popen[bytes]
    retiring: bool = False

    @property
    def pid(self) -> int:
        return self.popen.pid


@dataclass
class Autoscaling:
    """What an autoscaled group needs: the policy, the app to read the load from, the queues
    its workers consume and each worker's concurrency."""

    policy: AutoscalePolicy
    app: Conveyor
    queues: Sequence[str]
    concurrency: int
    state: ScaleState = field(default_factory=ScaleState)


class Supervisor:
    """Runs ``argv`` (a single-process ``conveyor worker`` command) as a group of children."""

    def __init__(
        self,
        argv: list[str],
        processes: int = 1,
        *,
        autoscaling: Autoscaling | None = None,
        burst: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.argv = argv
        self.autoscaling = autoscaling
        self.size = autoscaling.policy.min_workers if autoscaling else processes
        self.burst = burst
        self.clock = clock
        self.children: dict[int, Child] = {}
        self.retired = 0
        self._signals = 0
        self._restarts: dict[int, list[float]] = {}
        self._restart_at: dict[int, float] = {}
        self._exit_codes: list[int] = []

    # -- processes ------------------------------------------------------------------------------
    @property
    def active(self) -> list[Child]:
        """Children that count towards the size (not retiring)."""
        return [c for c in self.children.values() if not c.retiring]

    def _start(self, index: int) -> None:
        self.children[index] = Child(
            index,
            subprocess.Popen(
                self.argv,
                env={**os.environ, "CONVEYOR_WORKER_INDEX": str(index)},
                preexec_fn=_term_with_parent,  # only calls prctl: safe between fork and exec
            ),
        )
        log.info("started worker process %d (pid %d)", index, self.children[index].pid)

    def _free_index(self) -> int:
        taken = set(self.children) | set(self._restart_at)
        index = 0
        while index in taken:
            index += 1
        return index

    def _grow_to(self, size: int) -> None:
        while len(self.active) + len(self._restart_at) < size:
            self._start(self._free_index())

    def _signal(self, signum: int) -> None:
        """SIGTERM/SIGINT: pass SIGTERM on to every child, once per signal received."""
        self._signals += 1
        self._restart_at.clear()
        for child in self.children.values():
            if child.popen.poll() is None:
                child.popen.send_signal(signal.SIGTERM)

    def _reap(self) -> None:
        """Forget children that exited; schedule a restart for one that crashed."""
        now = self.clock()
        for index, child in list(self.children.items()):
            code = child.popen.poll()
            if code is None:
                continue
            del self.children[index]
            self._exit_codes.append(code)
            if child.retiring:
                self.retired += 1
                log.info("worker process %d (pid %d) retired", index, child.pid)
                continue
            if self._signals or self.burst:
                continue
            recent = [t for t in self._restarts.get(index, []) if now - t < 60]
            self._restarts[index] = [*recent, now]
            delay = min(0.5 * len(recent), 5.0)
            log.warning("worker process %d exited with %s; restarting in %.1fs", index, code, delay)
            self._restart_at[index] = now + delay
        for index, when in list(self._restart_at.items()):
            if now >= when and not self._signals:
                del self._restart_at[index]
                if len(self.active) < self.size:
                    self._start(index)

    # -- autoscaling --------------------------------------------------------------------------
    async def _sample(self, scaling: Autoscaling) -> LoadSample | None:
        try:
            loads = await scaling.app.inspect.load(list(scaling.queues))
        except ConveyorError as exc:
            log.warning("autoscale: cannot read the queues' load (%s); keeping the size", exc)
            return None
        ages = [x.oldest_age for x in loads if x.oldest_age is not None]
        return LoadSample(
            sum(x.ready for x in loads), sum(x.running for x in loads), max(ages, default=None)
        )

    async def _autoscale(self, scaling: Autoscaling) -> None:
        sample = await self._sample(scaling)
        if sample is None or self._signals:
            return
        current = len(self.active) + len(self._restart_at)
        decision = decide(
            scaling.policy, current, sample, self.clock(), scaling.state, scaling.concurrency
        )
        scaling.state = decision.state
        if decision.size == current:
            return
        log.info(
            "autoscale: %d -> %d worker processes (%s)", current, decision.size, decision.reason
        )
        self.size = decision.size
        if decision.size > current:
            self._grow_to(decision.size)
        else:
            for _ in range(current - decision.size):
                await self._retire_one(scaling)

    async def _retire_one(self, scaling: Autoscaling) -> None:
        """Retire the child with the fewest running jobs (an idle one if any; the newest
        among equals); a child still waiting for its restart is simply not restarted."""
        if self._restart_at:
            self._restart_at.pop(max(self._restart_at))
            return
        candidates = self.active
        if not candidates:
            return
        running: dict[int, int] = {}
        with contextlib.suppress(ConveyorError):
            for info in await scaling.app.inspect.workers():
                running[info.pid] = int(info.stats.get("active", 0))
        unknown = scaling.concurrency + 1
        child = min(candidates, key=lambda c: (running.get(c.pid, unknown), -c.index))
        child.retiring = True
        child.popen.send_signal(signal.SIGUSR2)
        log.info(
            "retiring worker process %d (pid %d, %s running job(s)): it takes no new jobs "
            "and exits when its running jobs are done",
            child.index,
            child.pid,
            running.get(child.pid, "?"),
        )

    # -- the loop -------------------------------------------------------------------------------
    async def run(self) -> int:
        """Supervise until a stop signal (or, in burst mode, every child exited); the exit
        status: the worst child's when they stopped by themselves, else 0."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._signal, sig)
        scaling = self.autoscaling
        if scaling is not None:
            p = scaling.policy
            log.info(
                "autoscaling %d..%d worker processes on %s (target wait %gs, %s jobs per "
                "process, scale down after %gs quiet, cooldown %gs)",
                p.min_workers,
                p.max_workers,
                ",".join(scaling.queues),
                p.target_wait,
                p.jobs_per_worker or scaling.concurrency,
                p.scale_down_after,
                p.cooldown,
            )
        self._grow_to(self.size)
        next_sample = self.clock()
        try:
            while True:
                self._reap()
                idle = not self.children and not self._restart_at
                if idle and (self._signals or self.burst or scaling is None):
                    break
                if scaling is not None and not self._signals and self.clock() >= next_sample:
                    await self._autoscale(scaling)
                    next_sample = self.clock() + scaling.policy.interval
                await asyncio.sleep(TICK)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        if self._signals:
            return 0
        return max(self._exit_codes, default=0)


def _term_with_parent() -> None:
    """In a supervised child: receive SIGTERM (a graceful drain) if the supervisor dies."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
