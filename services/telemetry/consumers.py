"""The telemetry service's subscriptions on ``telemetry:heartbeats``: the time series (group
``telemetry.timeseries``) and the latest-metrics cache for heartbeats that arrived over a gateway
socket (group ``telemetry.latest``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from libs.events.consumer import Subscription
from libs.events.projection import Delivery, projection_handler
from libs.events.service import ServiceHost

from .projections import timeseries_projection
from .store import LatestCache

LATEST_CONSUMER = "telemetry.latest"
HEARTBEAT = frozenset({"telemetry.heartbeat.v1"})


def subscriptions(host: ServiceHost) -> list[Subscription]:
    """The time-series projection (one write per batch) and the socket heartbeats' cache writes."""
    assert host.pool is not None
    projection = timeseries_projection(host)
    handler = projection_handler(host.pool, projection)
    return [
        *(
            Subscription(stream=s, group=projection.consumer, batch=handler, batch_types=projection.types)
            for s in projection.streams
        ),
        latest_subscription(host),
    ]


def latest_subscription(host: ServiceHost) -> Subscription:
    """Heartbeats appended by other services (gateway sockets) into the latest-metrics cache.

    Telemetry's own API writes the cache right after its append; a socket heartbeat is appended by
    the gateway, which does not own this cache, so the worker writes it from the stream. A heartbeat
    received longer ago than the cache's TTL (a consumer catching up on a backlog) is skipped: it
    would show stale metrics as the latest for a whole TTL.
    """
    assert host.redis is not None
    ttl_s = int(getattr(host.settings, "latest_ttl_s", 300))
    cache = LatestCache(host.redis, host.settings.stream_prefix, ttl_s)

    async def handle(batch: list[Delivery]) -> None:
        foreign = [(d.stream, d.envelope) for d in batch if d.envelope.producer != "telemetry"]
        if foreign:
            await cache.store(foreign, not_before=datetime.now(UTC) - timedelta(seconds=ttl_s))

    return Subscription(
        stream=host.stream("telemetry:heartbeats"),
        group=LATEST_CONSUMER,
        batch=handle,
        batch_types=HEARTBEAT,
        batch_size=1000,
    )
