"""The composition root: :class:`Conveyor`, the app users create.

It is the core :class:`~conveyor.core.app.App` (tasks, queues, the backend, enqueueing, events,
middleware, inspection, dead letters) plus the feature packages built on the core: schedules
(:mod:`conveyor.scheduler`) today. Feature packages depend on narrow protocols of the app, and
only this module depends on all of them, so the import graph has no cycles.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from conveyor.core.app import App
from conveyor.core.env import APP_VARIABLES, options_from_env
from conveyor.core.handle import JobHandle
from conveyor.core.seed000 import from_document
from conveyor.core.task import Task
from conveyor.domain.durations import Duration
from conveyor.errors import ConfigurationError
from conveyor.integrations.webhooks.registry import Webhooks
from conveyor.scheduler.scheduler import Schedules
from conveyor.scheduler.spec import ScheduleSpec, build_spec

__all__ = ["Conveyor"]


class Conveyor(App):
    """A Conveyor application.

    ``url`` picks the store: ``sqlite:///jobs.db`` (the default when ``None``),
    ``postgresql://…``, ``redis://…`` or ``memory://``. The App never reads environment
    variables; the CLI passes ``CONVEYOR_URL`` in when it is set.
    """

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> Conveyor:
        """An app configured from ``CONVEYOR_URL``, ``CONVEYOR_LEASE``,
        ``CONVEYOR_HEARTBEAT_INTERVAL``, ``CONVEYOR_MAX_STALLS``, ``CONVEYOR_TIMEOUT``,
        ``CONVEYOR_RETRY``, ``CONVEYOR_DEFAULT_QUEUE``, ``CONVEYOR_SERIALIZER`` (those set;
        ``options`` win). Reads ``environ`` (default ``os.environ``) only when called."""
        found = options_from_env(APP_VARIABLES, environ)
        return cls(**{**found, **options})

    @functools.cached_property
    def webhooks(self) -> Webhooks:
        """Webhook subscriptions and their delivery log
        (:class:`~conveyor.integrations.webhooks.registry.Webhooks`)."""
        return Webhooks(self)

    @functools.cached_property
    def schedules(self) -> Schedules:
        """Runtime management of schedules (:class:`~conveyor.scheduler.Schedules`)."""
        return Schedules(self)

    def schedule(
        self,
        name: str,
        task: Task[Any, Any] | str,
        *,
        cron: str | None = None,
        every: Duration | None = None,
        timezone: str = "UTC",
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> ScheduleSpec:
        """Declare a named schedule that enqueues ``task`` with ``args``/``kwargs``.

        ``cron`` (5 fields, or 6 with seconds first) or ``every`` (a duration); ``timezone``
        (IANA name); options: ``start``/``end`` (aware datetimes), ``jitter``, ``overlap``
        (default False: skip a tick while the previous run is queued or running),
        ``on_missed`` (``"skip"`` or ``"catch_up"``), ``catch_up_limit``, ``misfire_grace``,
        ``queue``, ``priority``. Invalid values raise :class:`ConfigurationError` naming the
        field.
        """
        task_name = task if isinstance(task, str) else task.name
        try:
            spec = build_spec(
                name,
                task_name,
                cron=cron,
                every=every,
                timezone=timezone,
                args=tuple(args),
                kwargs=kwargs,
                **options,
            )
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"schedule {name!r}: {exc}") from None
        return self.schedules.declare(spec)

    # -- seed 000 interop, inbound (issue 19; see core/seed000.py) ------------------------
    async def enqueue_seed000(self, document: dict[str, Any]) -> JobHandle[Any]:
        """Enqueue a seed-000 ``Task`` document (validated against the shipped schema; the
        mapping is in ``docs/seed000.md``). Raises :class:`InvalidArgumentsError` naming
        what does not fit. The document's ``id`` is the idempotency key: enqueueing the same
        document twice gives one job."""
        call = from_document(self.tasks, document)
        (handle,) = await self.enqueue_many([call.spec()])
        return handle

    def enqueue_seed000_sync(self, document: dict[str, Any]) -> JobHandle[Any]:
        """Blocking :meth:`enqueue_seed000`."""
        return self.portal.run(self.enqueue_seed000(document))

    def _declare_task_schedule(
        self, name: str, task: Task[Any, Any], schedule: dict[str, Any]
    ) -> None:
        self.schedule(name, task, **schedule)
