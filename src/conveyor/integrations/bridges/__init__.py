"""Broker bridges: events out to RabbitMQ, NATS JetStream or MQTT, and messages in as events.

``pip install 'conveyor[bridges]'``. Each bridge implements :class:`Bridge`
(:meth:`~Bridge.publish` confirmed by the broker, retried while it is down;
:meth:`~Bridge.consume` / :meth:`~Bridge.pump` acknowledging after storage). Kafka is not
shipped: no Kafka-protocol broker can be installed and tested on the machines Conveyor is built
on; see ``docs/integrations.md`` for the interface a Kafka bridge would implement.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conveyor.integrations.bridges.base import Bridge, BridgeStatus, Inbound

if TYPE_CHECKING:
    from conveyor.integrations.bridges.mqtt import MQTTBridge
    from conveyor.integrations.bridges.nats import NATSBridge
    from conveyor.integrations.bridges.rabbitmq import RabbitMQBridge

__all__ = ["Bridge", "BridgeStatus", "Inbound", "MQTTBridge", "NATSBridge", "RabbitMQBridge"]

_LAZY = {
    "MQTTBridge": "conveyor.integrations.bridges.mqtt",
    "NATSBridge": "conveyor.integrations.bridges.nats",
    "RabbitMQBridge": "conveyor.integrations.bridges.rabbitmq",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def bridge_from_config(raw: dict[str, Any]) -> Bridge:
    """A bridge from seed 003's ``messageQueue`` section: ``provider`` (``rabbitmq``,
    ``nats``, ``mqtt``), ``url``, ``topic`` (exchange / subject prefix / topic prefix),
    ``partitionKey`` (dotted path) and provider options."""
    options = dict(raw)
    provider = str(options.pop("provider", "")).lower()
    url = options.pop("url", None)
    topic = options.pop("topic", None)
    key_path = options.pop("partitionKey", None) or options.pop("key_path", None) or "type"
    common: dict[str, Any] = {"key_path": key_path}
    if "name" in options:
        common["name"] = options.pop("name")
    if provider == "rabbitmq":
        from conveyor.integrations.bridges.rabbitmq import RabbitMQBridge

        if topic:
            options["exchange"] = topic
        return RabbitMQBridge(url or "amqp://guest:guest@127.0.0.1:5672/", **common, **options)
    if provider == "nats":
        from conveyor.integrations.bridges.nats import NATSBridge

        if topic:
            options["subject_prefix"] = topic
        return NATSBridge(url or "nats://127.0.0.1:4222", **common, **options)
    if provider == "mqtt":
        from conveyor.integrations.bridges.mqtt import MQTTBridge

        if topic:
            options["topic_prefix"] = topic
        return MQTTBridge(url or "mqtt://127.0.0.1:1883", **common, **options)
    if provider in ("kafka", "sqs", "pubsub"):
        raise ValueError(
            f"messageQueue provider {provider!r} is not shipped: Conveyor ships bridges only for "
            "brokers it tests against a real server (rabbitmq, nats, mqtt)"
        )
    raise ValueError(f"messageQueue provider must be rabbitmq, nats or mqtt, got {provider!r}")
