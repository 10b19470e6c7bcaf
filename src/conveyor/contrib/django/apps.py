"""The Django app config: ``manage.py migrate`` also migrates a store kept in Django's own
database (``CONVEYOR = {"MIGRATE": False}`` turns that off)."""

from __future__ import annotations

import asyncio
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.db.models.signals import post_migrate


class ConveyorConfig(AppConfig):
    name = "conveyor.contrib.django"
    label = "conveyor"
    verbose_name = "Conveyor"

    def ready(self) -> None:
        if getattr(settings, "CONVEYOR", {}).get("MIGRATE", True):
            post_migrate.connect(_migrate_store, sender=self)


def _migrate_store(sender: Any, using: str = "default", **kwargs: Any) -> None:
    from conveyor.contrib.django.database import DjangoDatabaseFactory
    from conveyor.contrib.django.enqueue import get_app

    if not getattr(settings, "CONVEYOR", {}).get("APP"):
        return
    app = get_app()
    factory = app.factory
    if isinstance(factory, DjangoDatabaseFactory) and factory.using == using:
        asyncio.run(factory.migrate())
