"""Django integration: the app in settings, jobs enqueued in Django's own transaction or on
commit, the store on Django's own database, and ``manage.py conveyor ...``.

Add ``"conveyor.contrib.django"`` to ``INSTALLED_APPS`` and name your app::

    CONVEYOR = {"APP": "myproject.tasks:app"}

To keep the jobs in Django's own database (PostgreSQL or SQLite), build the app on it::

    from conveyor import Conveyor
    from conveyor.contrib.django import database_factory

    app = Conveyor(backend_factory=database_factory("default"))

Then ``manage.py migrate`` also creates Conveyor's tables there, and
:func:`enqueue_in_transaction` writes a job with Django's own connection, inside the open
``transaction.atomic()`` block: the job exists if and only if your writes commit.
:func:`enqueue_on_commit` works with any store: the job is enqueued once the transaction
commits (and never if it rolls back). Install with ``pip install 'conveyor[django]'``.
"""

from __future__ import annotations

from conveyor.contrib.django.database import DjangoDatabaseFactory, database_factory
from conveyor.contrib.django.enqueue import enqueue_in_transaction, enqueue_on_commit, get_app

__all__ = [
    "DjangoDatabaseFactory",
    "database_factory",
    "enqueue_in_transaction",
    "enqueue_on_commit",
    "get_app",
]
