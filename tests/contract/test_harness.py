"""The suite's own plumbing: when a backend kind is skipped and when it must fail."""

from __future__ import annotations

import socket

import pytest

from . import _support


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_kind_whose_module_is_missing_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.skip.Exception, match="not importable"):
        _support.require_kind("no_such_backend")


@pytest.mark.parametrize(
    ("ci", "outcome"), [("", pytest.skip.Exception), ("true", pytest.fail.Exception)]
)
def test_an_unreachable_server_skips_locally_and_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setenv("CI", ci)
    monkeypatch.setitem(_support._SERVERS, "memory", ("127.0.0.1", _closed_port()))
    with pytest.raises(outcome, match="unreachable"):
        _support.require_kind("memory")


def test_ci_flag_values(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, expected in [("true", True), ("1", True), ("", False), ("false", False)]:
        monkeypatch.setenv("CI", value)
        assert _support.in_ci() is expected
    monkeypatch.delenv("CI")
    assert _support.in_ci() is False
