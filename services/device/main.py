"""Composition root of the device service."""

from __future__ import annotations

from pathlib import Path

from libs.events.service import ServiceSpec

from .api import routers
from .config import Settings
from .consumers import projections, subscriptions, workers

SPEC = ServiceSpec(
    name="device",
    settings_cls=Settings,
    migrations_dir=Path(__file__).with_name("migrations"),
    routers=routers,
    subscriptions=subscriptions,
    projections=projections,
    workers=workers,
    relay=True,
    identity=True,
)
