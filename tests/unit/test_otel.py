"""OpenTelemetry tracing with the real SDK (in-memory exporter): the producer's W3C trace
context reaches the handler, and enqueue and each attempt get spans with the seed-002
fields."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from conveyor.contrib.otel import instrument
from conveyor.testing import FakeClock, memory_app, run_until_idle


@pytest.fixture
def traced() -> tuple[Any, InMemorySpanExporter, TracerProvider]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = memory_app(clock=FakeClock(), retry=2)
    instrument(app, tracer_provider=provider)
    return app, exporter, provider


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


@pytest.mark.parametrize("kind", ["async", "thread"])
async def test_the_trace_context_flows_from_the_producer_into_the_handler(
    traced: tuple[Any, InMemorySpanExporter, TracerProvider], kind: str
) -> None:
    app, exporter, provider = traced
    seen: dict[str, Any] = {}

    def look() -> str:
        span = trace.get_current_span()
        seen["context"] = span.get_span_context()
        with provider.get_tracer("user").start_as_current_span("handler work"):
            pass
        return "ok"

    if kind == "async":

        @app.task(name="work", queue="mail")
        async def work() -> str:
            return look()

    else:

        @app.task(name="work", queue="mail")
        def work() -> str:  # type: ignore[misc]
            return look()

    tracer = provider.get_tracer("web")
    with tracer.start_as_current_span("POST /signup") as request:
        handle = await work.enqueue()
    await run_until_idle(app, queues=("mail",))
    assert await handle.result(timeout=1) == "ok"

    spans = exporter.get_finished_spans()
    (send,) = by_name(spans, "send mail")
    (process,) = by_name(spans, "process mail")
    (inner,) = by_name(spans, "handler work")
    trace_id = request.get_span_context().trace_id
    assert {s.context.trace_id for s in (send, process, inner)} == {trace_id}
    assert send.parent is not None and send.parent.span_id == request.get_span_context().span_id
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert inner.parent is not None and inner.parent.span_id == process.context.span_id
    assert seen["context"].span_id == process.context.span_id  # the handler runs in it
    assert send.kind is trace.SpanKind.PRODUCER and process.kind is trace.SpanKind.CONSUMER

    record = (await handle.info()).record
    assert record.trace_id == format(trace_id, "032x")  # logs carry the same id
    assert record.metadata["traceparent"].split("-")[2] == format(send.context.span_id, "016x")
    attrs = dict(process.attributes or {})
    assert attrs["messaging.system"] == "conveyor"
    assert attrs["messaging.operation.type"] == "process"
    assert attrs["messaging.destination.name"] == "mail"
    assert attrs["messaging.message.id"] == handle.id
    assert attrs["conveyor.attempt"] == 1 and str(attrs["conveyor.worker_id"])
    assert float(attrs["conveyor.duration_ms"]) >= 0  # type: ignore[arg-type]
    assert "conveyor.error_code" not in attrs
    assert dict(send.attributes or {})["messaging.message.id"] == handle.id


async def test_each_attempt_is_a_span_and_failures_carry_their_error_code(
    traced: tuple[Any, InMemorySpanExporter, TracerProvider],
) -> None:
    app, exporter, _ = traced

    @app.task(name="flaky")
    def flaky() -> None:
        raise ConnectionError("down")

    handle = await flaky.enqueue()
    await run_until_idle(app)
    app.clock.advance(3600)
    await run_until_idle(app)
    assert (await handle.info()).record.attempts == 2

    attempts = by_name(exporter.get_finished_spans(), "process default")
    assert [dict(s.attributes or {})["conveyor.attempt"] for s in attempts] == [1, 2]
    for span in attempts:
        attrs = dict(span.attributes or {})
        assert attrs["conveyor.error_code"] == "error"
        assert attrs["error.type"] == "ConnectionError"
        assert span.status.status_code is trace.StatusCode.ERROR
        assert span.parent is not None
    assert len({s.context.trace_id for s in attempts}) == 1  # one trace per job
