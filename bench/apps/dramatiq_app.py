"""Dramatiq: ``dramatiq bench.apps.dramatiq_app``."""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench.apps import results_wanted, setting
from bench.recorder import echo as _echo
from bench.recorder import record

broker = RedisBroker(url=setting("URL"), namespace=setting("NS"))
_results: dict[str, Any] = {}
if results_wanted():
    from dramatiq.results import Results
    from dramatiq.results.backends import RedisBackend

    broker.add_middleware(Results(backend=RedisBackend(url=setting("URL"))))
    _results["store_results"] = True
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="noop")
def noop(t: float) -> None:
    record(t)


@dramatiq.actor(actor_name="echo", **_results)
def echo(x: str) -> Any:
    return _echo(x)


@dramatiq.actor(actor_name="blob")
def blob(data: str) -> None:
    """Carries a payload; never run."""
