"""The key-value capability: small shared state under ``(namespace, key)`` with an atomic
compare-and-set. The scheduler keeps one value per schedule here."""

from __future__ import annotations

from abc import ABC, abstractmethod


class KeyValueStore(ABC):
    """Bytes under ``(namespace, key)``, shared by every client of one store."""

    @abstractmethod
    async def kv_get(self, namespace: str, key: str) -> bytes | None:
        """The value stored under ``(namespace, key)``, or ``None``."""

    @abstractmethod
    async def kv_list(self, namespace: str) -> dict[str, bytes]:
        """Every key and value of a namespace."""

    @abstractmethod
    async def kv_swap(
        self, namespace: str, key: str, expected: bytes | None, value: bytes | None
    ) -> bool:
        """Compare-and-set, atomically: if the stored value equals ``expected`` (``None`` =
        absent), store ``value`` (``None`` = delete) and return ``True``; else change nothing
        and return ``False``."""
