"""Enqueueing from Django code: on commit, or inside Django's own transaction."""

from __future__ import annotations

from typing import ParamSpec, TypeVar

from conveyor.app import Conveyor
from conveyor.core.handle import JobHandle
from conveyor.core.task import Task
from conveyor.domain.ids import new_job_id
from conveyor.errors import ConfigurationError, InvalidStateError

P = ParamSpec("P")
R = TypeVar("R")


def get_app() -> Conveyor:
    """The app ``settings.CONVEYOR["APP"]`` names (``"module:attribute"``)."""
    import importlib

    from django.conf import settings

    spec = str(getattr(settings, "CONVEYOR", {}).get("APP") or "")
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ConfigurationError(
            "set CONVEYOR = {'APP': 'myproject.tasks:app'} in your Django settings"
        )
    app = getattr(importlib.import_module(module), attr, None)
    if not isinstance(app, Conveyor):
        raise ConfigurationError(f"CONVEYOR['APP'] = {spec!r} is not a conveyor.Conveyor app")
    return app


def enqueue_on_commit(task: Task[P, R], /, *args: P.args, **kwargs: P.kwargs) -> JobHandle[R]:
    """Enqueue when the current transaction of Django's default database commits (at once
    outside a transaction; never if it rolls back). The arguments are checked now, so a bad
    call fails here; the returned handle's job exists once the transaction committed.

    Works with any store. With the store in Django's own database, prefer
    :func:`enqueue_in_transaction` (no window between the commit and the enqueue)."""
    from django.db import transaction

    task.check_arguments(args, kwargs)
    task.encode_arguments(args, kwargs)  # validation errors at the call site
    job_id = new_job_id()
    call = task.options(job_id=job_id)
    transaction.on_commit(lambda: call.enqueue_sync(*args, **kwargs))
    return JobHandle(task.app, job_id, task.name, decode=task.decode_result)  # type: ignore[arg-type]


def enqueue_in_transaction(task: Task[P, R], /, *args: P.args, **kwargs: P.kwargs) -> JobHandle[R]:
    """Write the job with Django's own connection inside the open ``transaction.atomic()``
    block: it exists if and only if the block commits. The app's store must be that database
    (:func:`~conveyor.contrib.django.database_factory`)."""
    from django.db import connections

    from conveyor.contrib.django.database import DjangoDatabaseFactory

    factory = task.app.factory  # type: ignore[attr-defined]
    using = factory.using if isinstance(factory, DjangoDatabaseFactory) else None
    if using is None:
        raise ConfigurationError(
            f"enqueue_in_transaction needs the app's store in Django's database "
            f"(Conveyor(backend_factory=database_factory(...))); task {task.name} uses "
            f"{factory.describe()['url']}; use enqueue_on_commit instead"
        )
    connection = connections[using]
    if not connection.in_atomic_block:
        raise InvalidStateError(
            "enqueue_in_transaction must be called inside transaction.atomic() (otherwise "
            "the job would not be part of your transaction)"
        )
    connection.ensure_connection()
    return task.options(connection=connection.connection).enqueue_sync(*args, **kwargs)
