"""The in-memory backend package (``memory://``): the reference semantics.

``backend`` holds the store, the client and the factory. Every other backend is held to this one
by the contract suite and the differential state machine; capabilities added later live in
modules of their own beside it.
"""

from conveyor.backends.memory.backend import MemoryBackend, MemoryFactory
from conveyor.backends.memory.store import MemoryStore

__all__ = ["MemoryBackend", "MemoryFactory", "MemoryStore"]
