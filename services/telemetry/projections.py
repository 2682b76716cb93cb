"""The time-series read model, fed from ``telemetry:heartbeats`` (never emits events)."""

from __future__ import annotations

from libs.events.pg import Conn
from libs.events.projection import Delivery, Projection
from libs.events.schemas.telemetry import HeartbeatReceived
from libs.events.service import ServiceHost

from . import domain as d
from . import store as db

TIMESERIES_CONSUMER = "telemetry.timeseries"
TABLES = ("heartbeat_metrics", "metric_rollup_1m", "metric_rollup_1h")


def timeseries_projection(host: ServiceHost) -> Projection:
    """The ``timeseries`` projection (live consumer and ``rebuild timeseries`` share it)."""
    return Projection(
        name="timeseries",
        consumer=TIMESERIES_CONSUMER,
        streams=(host.stream("telemetry:heartbeats"),),
        tables=TABLES,
        types=frozenset({"telemetry.heartbeat.v1"}),
        apply=apply_heartbeats,
    )


async def apply_heartbeats(conn: Conn, batch: list[Delivery]) -> None:
    """One statement per batch: the rows, and the rollups of the rows that were new."""
    rows = []
    for delivery in batch:
        event = delivery.event
        if isinstance(event, HeartbeatReceived):
            rows.append(d.point_row(delivery.envelope.id, event))
    if rows:
        await db.insert_points(conn, rows)
