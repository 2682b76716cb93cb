"""The auth service's subscriptions: both identity streams into the audit projection."""

from __future__ import annotations

from libs.events.consumer import Subscription
from libs.events.projection import projection_handler
from libs.events.service import ServiceHost

from .projections import audit_projection


def subscriptions(host: ServiceHost) -> list[Subscription]:
    """One subscription per stream, group ``auth.audit``, feeding the audit projection."""
    assert host.pool is not None
    projection = audit_projection(host)
    handler = projection_handler(host.pool, projection)
    return [
        Subscription(stream=s, group=projection.consumer, batch=handler, batch_types=projection.types)
        for s in projection.streams
    ]
