"""Event integrations: webhooks, message-broker bridges and realtime channels.

Each part is its own subpackage with its own extra, imported lazily so the core install stays
light:

* :mod:`conveyor.integrations.webhooks` — Standard Webhooks signing and verification (stdlib
  only), an SSRF guard enforced at connect time, and HTTP delivery with retries
  (``pip install 'conveyor[webhooks]'`` for delivery, which uses httpx).
* :mod:`conveyor.integrations.bridges` — one small interface over RabbitMQ (aio-pika), NATS
  JetStream (nats-py) and MQTT (aiomqtt): publish out with broker confirms, consume in with
  acknowledgement after storage (``pip install 'conveyor[bridges]'``).
* :mod:`conveyor.integrations.realtime` — an ASGI app (Starlette) streaming events over SSE
  and WebSocket with per-connection backpressure and ``Last-Event-ID`` resume
  (``pip install 'conveyor[realtime]'``).

Events cross these integrations as :class:`~conveyor.integrations.envelope.EventEnvelope`
values, so none of them depends on how the event bus stores events.
"""

from __future__ import annotations

from conveyor.integrations.envelope import EventEnvelope, lookup_path
from conveyor.integrations.errors import IntegrationError
from conveyor.integrations.secrets import Secret, redact_url

__all__ = ["EventEnvelope", "IntegrationError", "Secret", "lookup_path", "redact_url"]
