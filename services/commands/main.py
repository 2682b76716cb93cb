"""Composition root of the commands service."""

from __future__ import annotations

from pathlib import Path

from libs.events.service import ServiceHost, ServiceSpec

from . import metrics, store
from .api import routers
from .config import Settings
from .consumers import subscriptions, workers


async def count_backlog(host: ServiceHost) -> None:
    """Open commands per state, counted for each scrape (the sweeper counts only in the worker)."""
    assert host.pool is not None
    async with host.pool.acquire() as conn:
        metrics.set_backlog(await store.open_count(conn))


SPEC = ServiceSpec(
    name="commands",
    settings_cls=Settings,
    migrations_dir=Path(__file__).with_name("migrations"),
    routers=routers,
    subscriptions=subscriptions,
    workers=workers,
    relay=True,
    identity=True,
    on_scrape=count_backlog,
)
