"""Composition root of the telemetry service."""

from __future__ import annotations

import asyncio
from pathlib import Path

from libs.events.retention import RetentionPolicy
from libs.events.service import ServiceHost, ServiceSpec, Task

from .api import fast_app, routers
from .config import Settings
from .consumers import subscriptions
from .handlers import Charts, run_ingest
from .projections import timeseries_projection


def background(host: ServiceHost) -> list[Task]:
    """The batching publisher runs beside the API in every process that serves it."""

    async def run(stop: asyncio.Event) -> None:
        await run_ingest(host, stop)

    return [run]


def workers(host: ServiceHost) -> list[Task]:
    """Time-series retention runs where the worker runs."""
    return [Charts(host).run_expiry]


SPEC = ServiceSpec(
    name="telemetry",
    settings_cls=Settings,
    migrations_dir=Path(__file__).with_name("migrations"),
    routers=routers,
    asgi=fast_app,  # the ingestion POSTs skip FastAPI: it caps below 5k requests/s per core
    background=background,
    workers=workers,
    subscriptions=subscriptions,
    projections=lambda host: {"timeseries": timeseries_projection(host)},
    identity=True,
    # telemetry:* streams are trimmed below what every consumer group has acknowledged.
    retention=RetentionPolicy(interval_s=10.0),
)
