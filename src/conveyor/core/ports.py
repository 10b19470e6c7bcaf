"""The narrow view of the app that handles, inspection, tasks and feature packages depend on.

A module that needs part of the app depends on a protocol, never on the whole
:class:`~conveyor.app.Conveyor`, so the import graph stays acyclic (type-checking imports
included). :class:`AppPort` is the common part: the store, the clock, the serializer and the
blocking portal. Modules that need more extend it next to their own code (``TaskHost`` in
:mod:`conveyor.core.task`, ``InspectHost`` in :mod:`conveyor.core.inspect`, ...).
"""

from __future__ import annotations

from typing import Protocol

from conveyor.backends.base import Backend
from conveyor.core.portal import Portal
from conveyor.core.serialization import Serializer


class AppPort(Protocol):
    """The store client, the clock, the serializer and the sync portal of an app."""

    serializer: Serializer
    portal: Portal

    async def backend(self) -> Backend:
        """The opened backend client for the running event loop."""
        ...

    def now(self) -> float:
        """The app's notion of now (the fake clock in tests)."""
        ...

    def backend_now(self) -> float | None:
        """What to pass to backends: ``None`` (the store's clock) unless a clock is injected."""
        ...
