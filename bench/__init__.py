"""Conveyor's benchmark suite: Conveyor and its Python peers, side by side, on each backend.

``bash bench/run.sh`` (``make bench``) runs it; ``docs/benchmarks.md`` explains the method.
Modules that run inside the peer libraries' environments (``cell``, ``recorder``, ``common``,
``stores``, ``adapters``, ``apps``) use the standard library and the library under test only.
"""
