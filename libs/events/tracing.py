"""OpenTelemetry context in envelope headers, and tracer setup (exporter off by default)."""

from __future__ import annotations

import os
import time
from typing import Any

from opentelemetry import context, propagate, trace

TRACER_NAME = "fleet.events"
# Which service made a span: one process may run several (``fleet up``), so the resource's
# ``service.name`` alone cannot say.
SERVICE_ATTR = "fleet.service"


def inject_headers() -> dict[str, str]:
    """W3C trace headers (``traceparent``) for the current span; empty without an active span."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def extract_context(headers: dict[str, str]) -> context.Context:
    """The parent context carried by an envelope's headers."""
    return propagate.extract(headers)


def headers_of(span: trace.Span) -> dict[str, str]:
    """W3C trace headers naming ``span`` as the parent (for what a handler emits because of it)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return carrier


_installed: list[float] = [0.0, 0.0]  # [1.0 once a provider is seen, monotonic time of the last look]


def tracing_on() -> bool:
    """Whether a tracer provider is installed (without one every span is a no-op: skip the work).

    A provider cannot be removed once set, so a yes is kept; a no is looked at again after a second
    (asking OpenTelemetry costs microseconds, too much for every heartbeat).
    """
    if _installed[0]:
        return True
    now = time.monotonic()
    if now - _installed[1] < 1.0 and _installed[1]:
        return False
    _installed[1] = now
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        _installed[0] = 1.0
    return bool(_installed[0])


def recheck() -> None:
    """Forget a cached "no provider" (call after installing one: spans start at once)."""
    _installed[1] = 0.0


def tracer() -> trace.Tracer:
    """The tracer used by the publisher and the consumer runner."""
    return trace.get_tracer(TRACER_NAME)


def configure_tracing(service_name: str, exporter: str | None = None) -> Any:
    """Install a tracer provider when an exporter is chosen: ``none`` (default), ``console``, ``otlp``.

    Returns the provider (or None) so callers can shut it down and flush spans.
    """
    exporter = (exporter or os.environ.get("OTEL_TRACES_EXPORTER") or "none").lower()
    if exporter == "none":
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    span_exporter: SpanExporter
    if exporter == "console":
        span_exporter = ConsoleSpanExporter()
    elif exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:  # pragma: no cover - depends on the optional extra
            raise RuntimeError(
                "OTEL_TRACES_EXPORTER=otlp needs the 'otlp' extra: pip install 'fleet-platform[otlp]'"
            ) from exc
        span_exporter = OTLPSpanExporter()
    else:
        raise ValueError(f"unknown trace exporter {exporter!r}: use none, console or otlp")
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)
    recheck()
    return provider
