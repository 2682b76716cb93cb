"""The telemetry service's subscriptions: heartbeats into the time series (group ``telemetry.timeseries``)."""

from __future__ import annotations

from libs.events.consumer import Subscription
from libs.events.projection import projection_handler
from libs.events.service import ServiceHost

from .projections import timeseries_projection


def subscriptions(host: ServiceHost) -> list[Subscription]:
    """One batch subscription feeding the time-series projection (one write per batch)."""
    assert host.pool is not None
    projection = timeseries_projection(host)
    handler = projection_handler(host.pool, projection)
    return [
        Subscription(stream=s, group=projection.consumer, batch=handler, batch_types=projection.types)
        for s in projection.streams
    ]
