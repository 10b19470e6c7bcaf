"""Optional dependencies: import them lazily, fail with the exact install command."""

from __future__ import annotations

import importlib
from types import ModuleType

from conveyor.errors import MissingDependencyError


def require(module: str, extra: str, package: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming ``conveyor[extra]``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(package or module.split(".")[0], extra) from None
