"""The event bus's configuration, in the shape of seed 003's ``EventBusConfig``.

::

    app.bus.configure({
        "eventSourcing": {"enabled": True, "snapshotInterval": 100, "retention": 365},
        "queue": {"concurrency": 20, "priorityEnabled": True, "deadLetterQueue": "failed_events"},
        "webhooks": [{"eventPattern": "order.*", "url": "https://api.example.com/webhook",
                      "retryPolicy": {"maxRetries": 3}}],
        "messageQueue": {"provider": "kafka", "topic": "events",
                         "partitionKey": "metadata.tenantId"},
        "realtime": {"protocol": "websocket",
                     "channels": [{"name": "notifications", "eventPattern": "notification.*"}]},
    })

``retention`` values are days (seed 003); ``snapshotInterval`` counts events. The ``webhooks``,
``messageQueue`` and ``realtime`` sections are checked for shape and kept on the config for the
integrations (webhooks, broker bridges, realtime) that build on the bus. Snake-case keys and
:class:`EventBusConfig` objects are accepted as well.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from conveyor.core.events import EVENT_KINDS
from conveyor.domain.events import PatternError, check_pattern
from conveyor.errors import ConfigurationError

DAY = 86400.0


@dataclass(frozen=True, slots=True)
class EventSourcingConfig:
    """``enabled``; ``snapshot_interval``: take a snapshot every N events of a stream (0: only
    when asked); ``retention``: seconds events already covered by a snapshot are kept."""

    enabled: bool = False
    snapshot_interval: int = 100
    retention: float | None = None


@dataclass(frozen=True, slots=True)
class BusQueueConfig:
    """Where deliveries run: the queue ``name`` (``concurrency`` per worker), whether events'
    priorities order their deliveries (``priority_enabled``), and the dead-letter label of
    deliveries that failed for good (``dead_letter_queue``, seed 003's ``failed_events``)."""

    name: str = "events"
    concurrency: int | None = None
    priority_enabled: bool = True
    dead_letter_queue: str = "failed_events"


@dataclass(frozen=True, slots=True)
class EventBusConfig:
    """The whole bus configuration (see the module docstring for the dict form).

    ``retention``: seconds the event log keeps events (``None``: forever); ``lifecycle``: the
    job lifecycle events (``completed``, ``dead``, ...) to publish on the bus as
    ``conveyor.job.<kind>``; ``settle_interval``: how often a worker repairs ordered chains.
    """

    event_sourcing: EventSourcingConfig = field(default_factory=EventSourcingConfig)
    queue: BusQueueConfig = field(default_factory=BusQueueConfig)
    retention: float | None = None
    lifecycle: tuple[str, ...] = ()
    settle_interval: float = 5.0
    webhooks: tuple[dict[str, Any], ...] = ()
    message_queue: dict[str, Any] | None = None
    realtime: dict[str, Any] | None = None

    @classmethod
    def build(cls, value: EventBusConfig | Mapping[str, Any] | None) -> EventBusConfig:
        """Accept a config, the seed-003 dict (camelCase or snake_case keys) or ``None``."""
        if value is None:
            return cls()
        if isinstance(value, EventBusConfig):
            return value
        if not isinstance(value, Mapping):
            raise ConfigurationError(
                f"the bus configuration must be a dict or an EventBusConfig, not "
                f"{type(value).__name__}"
            )
        data = _snake(value, "bus configuration")
        known = {
            "event_sourcing",
            "queue",
            "retention",
            "lifecycle",
            "settle_interval",
            "webhooks",
            "message_queue",
            "realtime",
        }
        _only(data, known, "bus configuration")
        es = _snake(data.get("event_sourcing") or {}, "eventSourcing")
        _only(es, {"enabled", "snapshot_interval", "retention"}, "eventSourcing")
        interval = es.get("snapshot_interval", 100)
        if not isinstance(interval, int) or isinstance(interval, bool) or interval < 0:
            raise ConfigurationError("eventSourcing.snapshotInterval must be an integer >= 0")
        queue = _snake(data.get("queue") or {}, "queue")
        _only(
            queue,
            {"name", "concurrency", "priority_enabled", "dead_letter_queue"},
            "queue",
        )
        concurrency = queue.get("concurrency")
        if concurrency is not None and (
            not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1
        ):
            raise ConfigurationError("queue.concurrency must be an integer >= 1")
        for key in ("name", "dead_letter_queue"):
            if key in queue and (not isinstance(queue[key], str) or not queue[key]):
                raise ConfigurationError(f"queue.{key} must be a non-empty string")
        lifecycle = tuple(data.get("lifecycle") or ())
        for kind in lifecycle:
            if kind not in EVENT_KINDS:
                raise ConfigurationError(
                    f"unknown lifecycle event {kind!r}; known: {', '.join(EVENT_KINDS)}"
                )
        settle = data.get("settle_interval", 5.0)
        if not isinstance(settle, int | float) or isinstance(settle, bool) or settle <= 0:
            raise ConfigurationError("settle_interval must be a positive number of seconds")
        return cls(
            event_sourcing=EventSourcingConfig(
                enabled=bool(es.get("enabled", False)),
                snapshot_interval=interval,
                retention=_days(es.get("retention"), "eventSourcing.retention"),
            ),
            queue=BusQueueConfig(
                name=queue.get("name", "events"),
                concurrency=concurrency,
                priority_enabled=bool(queue.get("priority_enabled", True)),
                dead_letter_queue=queue.get("dead_letter_queue", "failed_events"),
            ),
            retention=_days(data.get("retention"), "retention"),
            lifecycle=lifecycle,
            settle_interval=float(settle),
            webhooks=tuple(_webhook(w, i) for i, w in enumerate(data.get("webhooks") or ())),
            message_queue=_message_queue(data.get("message_queue")),
            realtime=_realtime(data.get("realtime")),
        )


def _snake(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{where} must be a dict, not {type(value).__name__}")
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = "".join("_" + c.lower() if c.isupper() else c for c in str(key))
        out[name] = item
    return out


def _only(data: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )


def _days(value: Any, where: str) -> float | None:
    """Seed 003's retention: a number of days, or a timedelta."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value) * DAY
    else:
        raise ConfigurationError(f"{where} must be a number of days or a timedelta")
    if seconds <= 0:
        raise ConfigurationError(f"{where} must be positive")
    return seconds


def _pattern(value: Any, where: str) -> str:
    try:
        return check_pattern(value)
    except PatternError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None


def _webhook(value: Any, i: int) -> dict[str, Any]:
    hook = _snake(value, f"webhooks[{i}]")
    _pattern(hook.get("event_pattern"), f"webhooks[{i}].eventPattern")
    url = hook.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigurationError(f"webhooks[{i}].url must be an http(s) URL")
    return hook


def _message_queue(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    mq = _snake(value, "messageQueue")
    providers = ("kafka", "rabbitmq", "sqs", "pubsub", "nats", "mqtt")
    if mq.get("provider") not in providers:
        raise ConfigurationError(f"messageQueue.provider must be one of {', '.join(providers)}")
    return mq


def _realtime(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    rt = _snake(value, "realtime")
    if rt.get("protocol", "websocket") not in ("websocket", "sse"):
        raise ConfigurationError("realtime.protocol must be 'websocket' or 'sse'")
    for i, channel in enumerate(rt.get("channels") or ()):
        ch = _snake(channel, f"realtime.channels[{i}]")
        if not isinstance(ch.get("name"), str) or not ch["name"]:
            raise ConfigurationError(f"realtime.channels[{i}].name must be a non-empty string")
        _pattern(ch.get("event_pattern"), f"realtime.channels[{i}].eventPattern")
    return rt
