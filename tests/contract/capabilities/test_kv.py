"""Contract of the key-value capability (:class:`conveyor.backends.capabilities.KeyValueStore`),
every backend held to the memory reference: get, list and compare-and-set, shared by clients."""

from __future__ import annotations

import asyncio

import pytest

from conveyor.backends import Backend
from conveyor.backends.capabilities import KeyValueStore, capability_names, require
from conveyor.errors import ConfigurationError


def _kv(backend: Backend) -> KeyValueStore:
    assert isinstance(backend, KeyValueStore), f"{type(backend).__name__} lacks the kv capability"
    return backend


async def test_every_backend_declares_the_capability(backend: Backend) -> None:
    assert "kv" in capability_names(backend)
    require(backend, KeyValueStore, "schedules")  # does not raise


async def test_missing_values_and_empty_namespaces(backend: Backend) -> None:
    kv = _kv(backend)
    assert await kv.kv_get("ns", "absent") is None
    assert await kv.kv_list("ns") == {}


async def test_swap_from_absent_creates_and_is_visible_to_other_clients(
    backend: Backend, other_backend: Backend
) -> None:
    kv = _kv(backend)
    assert await kv.kv_swap("ns", "a", None, b"1")
    assert await _kv(other_backend).kv_get("ns", "a") == b"1"
    assert await _kv(other_backend).kv_list("ns") == {"a": b"1"}


async def test_swap_only_applies_over_the_expected_value(backend: Backend) -> None:
    kv = _kv(backend)
    assert await kv.kv_swap("ns", "a", None, b"1")
    assert not await kv.kv_swap("ns", "a", None, b"2")  # it exists now
    assert not await kv.kv_swap("ns", "a", b"0", b"2")  # stale expectation
    assert await kv.kv_get("ns", "a") == b"1"
    assert await kv.kv_swap("ns", "a", b"1", b"2")
    assert await kv.kv_get("ns", "a") == b"2"


async def test_swap_to_none_deletes(backend: Backend) -> None:
    kv = _kv(backend)
    await kv.kv_swap("ns", "a", None, b"1")
    assert not await kv.kv_swap("ns", "a", b"x", None)
    assert await kv.kv_swap("ns", "a", b"1", None)
    assert await kv.kv_get("ns", "a") is None
    assert await kv.kv_list("ns") == {}
    assert not await kv.kv_swap("ns", "a", b"1", None)  # already gone


async def test_namespaces_are_separate_and_values_are_bytes_as_given(backend: Backend) -> None:
    kv = _kv(backend)
    blob = bytes(range(256)) * 4
    await kv.kv_swap("one", "k", None, blob)
    await kv.kv_swap("two", "k", None, b"")
    await kv.kv_swap("one", "k:2", None, "é".encode())
    assert await kv.kv_list("one") == {"k": blob, "k:2": "é".encode()}
    assert await kv.kv_list("two") == {"k": b""}
    assert await kv.kv_get("two", "k") == b""


async def test_concurrent_swaps_from_one_value_let_exactly_one_win(
    backend: Backend, other_backend: Backend
) -> None:
    await _kv(backend).kv_swap("ns", "counter", None, b"0")
    clients = [_kv(backend), _kv(other_backend)] * 5
    wins = await asyncio.gather(
        *(c.kv_swap("ns", "counter", b"0", str(i + 1).encode()) for i, c in enumerate(clients))
    )
    assert sum(wins) == 1
    winner = wins.index(True)
    assert await _kv(backend).kv_get("ns", "counter") == str(winner + 1).encode()


async def test_require_names_the_feature_and_the_missing_capability() -> None:
    with pytest.raises(
        ConfigurationError, match="schedules needs a backend with the KeyValueStore"
    ):
        require(object(), KeyValueStore, "schedules")
