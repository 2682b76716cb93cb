"""Prometheus metrics of a process: ``GET /metrics`` renders one registry per process.

prometheus_client is used directly, with a registry this module owns: several hosts in one process
(``fleet up``, tests) share it and nothing is registered twice. (The OpenTelemetry meters the code
also feeds need a global MeterProvider, which can be set once per process and which embedding code
or tests may already have installed; they stay for OTLP users.)

Families: HTTP requests and latency per route *template* (never a raw path: dialect W's carries a
token), consumer-group lag and pending, dead-letter stream lengths, and gauges services register
(connected agents per dialect, portals, open commands per state). No family has a per-device label.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from . import stats

CONTENT_TYPE = CONTENT_TYPE_LATEST
REGISTRY = CollectorRegistry(auto_describe=False)

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Requests(Collector):
    """HTTP requests counted and timed in plain dicts (a labelled prometheus_client child costs
    several microseconds per request behind its lock; this costs well under one), rendered at scrape."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str, str], int] = {}
        # per (service, method, route): one count per bucket (the last one is +Inf), then the sum
        self.times: dict[tuple[str, str, str], list[float]] = {}

    def record(self, service: str, method: str, route: str, status: int, seconds: float) -> None:
        key = (service, method, route, str(status))
        self.counts[key] = self.counts.get(key, 0) + 1
        times = self.times.get(key[:3])
        if times is None:
            times = self.times[key[:3]] = [0.0] * (len(BUCKETS) + 2)
        times[bisect.bisect_left(BUCKETS, seconds)] += 1
        times[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        counts = CounterMetricFamily(
            "fleet_http_requests",
            "HTTP requests answered, per service, method, route template and status",
            labels=["service", "method", "route", "status"],
        )
        for key, n in sorted(self.counts.items()):
            counts.add_metric(list(key), n)
        yield counts
        times = HistogramMetricFamily(
            "fleet_http_request_duration_seconds",
            "time from request to the end of the response, per service, method and route template",
            labels=["service", "method", "route"],
        )
        for tkey, values in sorted(self.times.items()):
            cumulative = list(itertools.accumulate(values[:-1]))
            bounds = [*(str(b) for b in BUCKETS), "+Inf"]
            times.add_metric(list(tkey), list(zip(bounds, cumulative, strict=True)), values[-1])
        yield times


REQUESTS = _Requests()
REGISTRY.register(REQUESTS)


Sample = tuple[dict[str, str], float]
Source = Callable[[], Iterable[Sample]]


class _Gauges(Collector):
    """Gauges read at scrape time from what the process holds (sockets, stats, counts)."""

    def __init__(self) -> None:
        self.gauges: dict[str, tuple[str, tuple[str, ...], Source]] = {}

    def collect(self) -> Iterator[Metric]:
        for name, (doc, labels, source) in sorted(self.gauges.items()):
            family = GaugeMetricFamily(name, doc, labels=list(labels))
            seen: set[tuple[str, ...]] = set()
            for attrs, value in source():
                key = tuple(str(attrs.get(label, "")) for label in labels)
                if key not in seen:  # two hosts of one group report the same figures once
                    seen.add(key)
                    family.add_metric(list(key), value)
            yield family


_gauges = _Gauges()
REGISTRY.register(_gauges)


def gauge(name: str, doc: str, labels: Sequence[str], source: Source) -> None:
    """Register a gauge read from ``source`` at each scrape; a second registration of a name is ignored."""
    _gauges.gauges.setdefault(name, (doc, tuple(labels), source))


def render() -> bytes:
    """The registry in the Prometheus text format."""
    return generate_latest(REGISTRY)


def _groups(attr: str) -> Source:
    def read() -> Iterable[Sample]:
        for (stream, group), figures in stats.group_figures().items():
            value = figures.lag if attr == "lag" else figures.pending
            if value is not None:
                yield {"stream": stream, "group": group}, float(value)

    return read


def _dlq() -> Iterable[Sample]:
    for stream, length in stats.dlq_lengths().items():
        yield {"stream": stream}, float(length)


gauge(
    "fleet_consumer_group_lag",
    "entries of the stream the group has not read yet",
    ("stream", "group"),
    _groups("lag"),
)
gauge(
    "fleet_consumer_group_pending",
    "entries the group read but has not acknowledged",
    ("stream", "group"),
    _groups("pending"),
)
gauge("fleet_dlq_entries", "entries in a dead-letter stream", ("stream",), _dlq)
