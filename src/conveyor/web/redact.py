"""Field redaction: named argument and result fields replaced by ``•••`` on the server, so
their values never reach a browser or an API client.

``redact={"billing.charge": ["card", "cvv"], "*": ["password"]}``: the names apply to keyword
arguments, to positional arguments by their parameter name (when the task is declared in the
app), and to keys at any depth inside arguments, results, progress and log extras.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

MASK = "•••"


def mask(value: Any, names: frozenset[str]) -> Any:
    """``value`` with every dict entry whose key is in ``names`` masked, at any depth."""
    if not names:
        return value
    if isinstance(value, dict):
        return {k: MASK if k in names else mask(v, names) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask(v, names) for v in value]
    return value


class Redactor:
    """Which fields to mask for which task."""

    def __init__(
        self,
        rules: Mapping[str, Sequence[str]] | None,
        signature_of: Callable[[str], inspect.Signature | None],
    ) -> None:
        self.rules = {task: frozenset(names) for task, names in (rules or {}).items()}
        self._signature_of = signature_of

    def names(self, task: str) -> frozenset[str]:
        return self.rules.get(task, frozenset()) | self.rules.get("*", frozenset())

    def job(self, data: dict[str, Any]) -> dict[str, Any]:
        """A job's JSON dict (``JobInfo.to_dict``) with the task's fields masked."""
        names = self.names(str(data.get("task", "")))
        if not names:
            return data
        out = dict(data)
        args = data.get("args")
        if isinstance(args, list):
            params = self._positional(str(data.get("task", "")))
            out["args"] = [
                MASK if i < len(params) and params[i] in names else mask(v, names)
                for i, v in enumerate(args)
            ]
        for key in ("kwargs", "result", "progress", "metadata"):
            out[key] = mask(data.get(key), names)
        if isinstance(data.get("logs"), list):
            out["logs"] = [
                {**e, "extra": mask(e.get("extra"), names)} if isinstance(e, dict) else e
                for e in data["logs"]
            ]
        return out

    def _positional(self, task: str) -> list[str]:
        sig = self._signature_of(task)
        if sig is None:
            return []
        return [
            p.name
            for p in sig.parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
