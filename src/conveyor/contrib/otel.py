"""OpenTelemetry tracing: a span when a job is enqueued, a span for every attempt, and the W3C
trace context carried from the producer into the handler.

::

    from conveyor.contrib.otel import instrument

    instrument(app)                       # the global tracer provider, or tracer_provider=...

Needs only ``opentelemetry-api`` (``pip install 'conveyor[otel]'``); configure the SDK and an
exporter as usual. What is recorded (OpenTelemetry's messaging conventions):

- **enqueue**: a ``PRODUCER`` span ``send <queue>`` per job, with ``messaging.system =
  "conveyor"``, ``messaging.operation.type = "send"``, ``messaging.destination.name``,
  ``messaging.message.id``, ``conveyor.task``. The job's ``traceparent`` (and ``tracestate``)
  is stored in its metadata — the job's headers, never its arguments — and its ``trace_id``
  is the span's trace id, so logs and the dashboard show the same id.
- **each attempt**: a ``CONSUMER`` span ``process <queue>``, child of the enqueue span (so
  the handler's own spans join the producer's trace), with the seed-002 fields
  ``conveyor.worker_id``, ``conveyor.attempt``, ``conveyor.duration_ms`` and, when it
  failed, ``conveyor.error_code`` and ``error.type`` (status ``ERROR``, the exception
  recorded); ``trace_id`` and ``span_id`` are the span's own.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from conveyor.core.middleware import (
    EnqueueCall,
    EnqueueNext,
    ExecuteCall,
    ExecuteNext,
    Middleware,
)
from conveyor.domain.failure import classify
from conveyor.errors import MissingDependencyError

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
except ImportError:  # pragma: no cover - exercised where opentelemetry-api is absent
    raise MissingDependencyError("opentelemetry-api", "otel") from None

if TYPE_CHECKING:
    from conveyor.core.app import App
    from conveyor.core.handle import JobHandle

__all__ = ["TracingMiddleware", "instrument"]

SYSTEM = "conveyor"
#: Metadata keys the trace context travels in (W3C Trace Context header names).
CARRIER_KEYS = ("traceparent", "tracestate")


class TracingMiddleware(Middleware):
    """Spans around enqueue and execution (see the module docstring)."""

    def __init__(self, tracer_provider: Any = None, app: App | None = None) -> None:
        from conveyor import __version__

        self.tracer = trace.get_tracer("conveyor", __version__, tracer_provider=tracer_provider)
        self.app = app  # resolves the queue of a call that names none

    def _queue(self, call: EnqueueCall) -> str:
        if call.options.queue:
            return call.options.queue
        if self.app is None:
            return ""
        task = self.app.tasks.get(call.task)
        return (task.config.queue if task is not None else None) or self.app.default_queue

    async def enqueue(
        self, calls: list[EnqueueCall], call_next: EnqueueNext
    ) -> list[JobHandle[Any]]:
        spans = []
        for call in calls:
            queue = self._queue(call)
            span = self.tracer.start_span(
                f"send {queue}".strip(),
                kind=trace.SpanKind.PRODUCER,
                attributes={
                    "messaging.system": SYSTEM,
                    "messaging.operation.type": "send",
                    "messaging.operation.name": "send",
                    "conveyor.task": call.task,
                    **({"messaging.destination.name": queue} if queue else {}),
                },
            )
            carrier: dict[str, str] = {}
            propagate.inject(carrier, context=trace.set_span_in_context(span))
            headers = {k: v for k, v in carrier.items() if k in CARRIER_KEYS}
            span_context = span.get_span_context()
            trace_id = (
                call.options.trace_id
                if call.options.trace_id is not None or not span_context.is_valid
                else format(span_context.trace_id, "032x")
            )
            call.options = replace(
                call.options, metadata={**call.options.metadata, **headers}, trace_id=trace_id
            )
            spans.append(span)
        try:
            handles = await call_next(calls)
        except BaseException as exc:
            for span in spans:
                span.record_exception(exc)
                span.set_status(trace.Status(trace.StatusCode.ERROR, str(exc)))
                span.set_attribute("error.type", type(exc).__name__)
                span.end()
            raise
        for span, handle in zip(spans, handles, strict=False):
            span.set_attribute("messaging.message.id", handle.id)
            span.end()
        return handles

    async def execute(self, call: ExecuteCall, call_next: ExecuteNext) -> Any:
        ctx = call.ctx
        carrier = {k: str(v) for k, v in ctx.metadata.items() if k in CARRIER_KEYS}
        parent = propagate.extract(carrier)
        span = self.tracer.start_span(
            f"process {ctx.queue}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": ctx.queue,
                "messaging.message.id": ctx.job_id,
                "conveyor.task": ctx.task,
                "conveyor.worker_id": ctx.worker_id,
                "conveyor.attempt": ctx.attempt,
            },
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        started = time.monotonic()
        try:
            result = await call_next(call)
        except BaseException as exc:
            facts = classify(exc)
            span.set_attribute("conveyor.error_code", facts.code)
            span.set_attribute("error.type", facts.type_name)
            span.record_exception(exc)
            span.set_status(trace.Status(trace.StatusCode.ERROR, facts.message))
            raise
        finally:
            span.set_attribute("conveyor.duration_ms", (time.monotonic() - started) * 1000.0)
            otel_context.detach(token)
            span.end()
        return result


def instrument(app: App, tracer_provider: Any = None) -> TracingMiddleware:
    """Trace ``app``: adds :class:`TracingMiddleware` as its outermost middleware (so the
    spans cover the other middleware too) and returns it."""
    middleware = TracingMiddleware(tracer_provider, app)
    app.middleware.insert(0, middleware)
    return middleware
