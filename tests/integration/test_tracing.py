"""Trace context travels in envelope headers; the runner opens one consumer span per entry."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from libs.events.consumer import ConsumerRunner, Subscription
from libs.events.projection import Delivery
from libs.events.publisher import Publisher
from libs.events.schemas.device import DeviceRegistered

from .helpers import Running, eventually


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


async def test_span_per_entry_continues_the_publishers_trace(r, prefix, spans):
    stream = f"{prefix}events:device"
    handled: list[str] = []

    async def handler(d: Delivery) -> None:
        handled.append(d.envelope.id)

    pub = Publisher(r, producer="device")
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("http request") as parent:
        _id, env = await pub.publish(
            stream, DeviceRegistered(device_id="d1", workspace_id="w", name="n", device_type="virtual")
        )
    assert env.headers["traceparent"].split("-")[1] == format(parent.get_span_context().trace_id, "032x")
    await pub.publish(
        stream, DeviceRegistered(device_id="d2", workspace_id="w", name="n", device_type="virtual")
    )
    sub = Subscription(stream, "test.trace", handlers={"device.registered.v1": handler})
    async with Running(ConsumerRunner(r, sub, consumer="c", block_ms=50)):
        await eventually(lambda: len(handled) == 2)
    consumer_spans = [s for s in spans.get_finished_spans() if s.kind == trace.SpanKind.CONSUMER]
    assert len(consumer_spans) == 2
    first = next(s for s in consumer_spans if s.attributes["messaging.message.id"] == env.id)
    assert first.context.trace_id == parent.get_span_context().trace_id
    assert first.parent is not None and first.parent.span_id == parent.get_span_context().span_id
    assert first.attributes["messaging.system"] == "redis"
    assert first.attributes["messaging.destination.name"] == stream
    assert first.attributes["messaging.consumer.group.name"] == "test.trace"


async def test_group_lag_is_exported_as_a_gauge(r, prefix):
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    stream = f"{prefix}events:device"
    gate = asyncio.Event()

    async def handler(d: Delivery) -> None:
        await gate.wait()

    pub = Publisher(r, producer="device")
    group = "test.gauge"
    sub = Subscription(stream, group, handlers={"device.registered.v1": handler})
    runner = ConsumerRunner(r, sub, consumer="c", block_ms=50, batch_size=1, stats_interval_s=0.05)
    events = [
        DeviceRegistered(device_id=f"d{i}", workspace_id="w", name="n", device_type="virtual")
        for i in range(5)
    ]
    async with Running(runner):
        try:
            await pub.publish_batch(stream, events)
            await eventually(lambda: runner.stats.lag == 4 and runner.stats.pending == 1)
            points = {
                m.name: [
                    p
                    for p in m.data.data_points
                    if p.attributes.get("messaging.consumer.group.name") == group
                ]
                for rm in reader.get_metrics_data().resource_metrics
                for sm in rm.scope_metrics
                for m in sm.metrics
            }
            assert [p.value for p in points["fleet.consumer.lag"]] == [4]
            assert [p.value for p in points["fleet.consumer.pending"]] == [1]
            assert points["fleet.consumer.lag"][0].attributes["messaging.destination.name"] == stream
        finally:
            gate.set()  # let the blocked handler finish so the runner can stop
