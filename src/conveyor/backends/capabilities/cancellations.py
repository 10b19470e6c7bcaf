"""The pushed-cancellation capability: a stream of the ids of running jobs whose cancellation
was just requested, so a worker interrupts them at once instead of at its next heartbeat.

Pushes may be missed (a message sent while a connection is down is lost); the heartbeat's
``cancel_requested`` flag stays the fallback on every backend."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator


class PushesCancellations(ABC):
    """Implemented by backend clients that can push cancellation requests (Redis pub/sub)."""

    @abstractmethod
    def subscribe_cancellations(self) -> AsyncIterator[str]:
        """Job ids, as their cancellations are requested, until the iterator is closed."""
