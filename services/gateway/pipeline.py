"""Pipeline health for portals: consumer-group lag and signal -> portal latency, every few seconds.

Latency is measured when a live ``device.status_changed`` caused by a heartbeat or a connection
reaches this gateway's portal queues: the push time minus the change's ``at`` (the time telemetry
received the heartbeat, or the gateway saw the socket). Changes made by deadlines
(``heartbeat_missed``/``heartbeat_timeout``) are not counted: their ``at`` is a deadline, not a signal.
Every gateway measures its own pushes; lag is the same for all (read from Redis).
"""

from __future__ import annotations

import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace
from prometheus_client import Histogram

from libs.events import metrics as prometheus
from libs.events.envelope import Envelope
from libs.events.schemas.device import DeviceStatusChanged
from libs.events.stats import group_stats, list_streams
from libs.events.tracing import SERVICE_ATTR, extract_context, tracer, tracing_on

DEADLINES = frozenset({"heartbeat_missed", "heartbeat_timeout"})
WINDOW_S = 60.0  # latencies shown are those of the last minute

LATENCY = Histogram(
    "fleet_portal_status_latency_seconds",
    "from a heartbeat or connection to its status change reaching portal queues",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=prometheus.REGISTRY,
)


class Pipeline:
    """Recent latencies of one gateway, and the frame portals get."""

    def __init__(self) -> None:
        self.recent: deque[tuple[float, float]] = deque(maxlen=10_000)  # (monotonic time, seconds)

    def pushed(self, envelope: Envelope, event: DeviceStatusChanged, sockets: int) -> None:
        """A live status change went to ``sockets`` portal queues: trace it and time it."""
        if tracing_on():
            span = tracer().start_span(
                f"portal push {envelope.type}",
                context=extract_context(envelope.headers) if envelope.headers else None,
                kind=trace.SpanKind.INTERNAL,
                attributes={SERVICE_ATTR: "gateway", "fleet.portal.sockets": sockets},
            )
            span.end()
        if event.reason in DEADLINES:
            return
        seconds = max((datetime.now(UTC) - event.at).total_seconds(), 0.0)
        LATENCY.observe(seconds)
        self.recent.append((time.monotonic(), seconds))

    def latency(self) -> dict[str, float] | None:
        """p50, p95 and max (ms) over the last minute; None without a change in it."""
        horizon = time.monotonic() - WINDOW_S
        while self.recent and self.recent[0][0] < horizon:
            self.recent.popleft()
        values = sorted(s for _t, s in self.recent)
        if not values:
            return None

        def pick(q: float) -> float:
            return round(values[min(int(q * len(values)), len(values) - 1)] * 1000, 1)

        return {"p50_ms": pick(0.5), "p95_ms": pick(0.95), "max_ms": pick(1.0), "n": len(values)}


async def frame(redis: Any, prefix: str, pipeline: Pipeline) -> dict[str, Any]:
    """``{type: "pipeline", groups: [{group, stream, lag, pending}], latency, at}`` (lag None: unknown)."""
    groups = []
    streams = [await list_streams(redis, f"{prefix}{kind}:") for kind in ("events", "telemetry")]
    for stream in streams[0] + streams[1]:
        name = stream.removeprefix(prefix)
        for g in await group_stats(redis, stream):
            groups.append({"group": g.group, "stream": name, "lag": g.lag, "pending": g.pending})
    return {
        "type": "pipeline",
        "groups": groups,
        "latency": pipeline.latency(),
        "at": datetime.now(UTC).isoformat(),
    }
