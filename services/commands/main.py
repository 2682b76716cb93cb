"""Composition root of the commands service."""

from __future__ import annotations

from pathlib import Path

from libs.events.service import ServiceSpec

from .api import routers
from .config import Settings
from .consumers import subscriptions, workers

SPEC = ServiceSpec(
    name="commands",
    settings_cls=Settings,
    migrations_dir=Path(__file__).with_name("migrations"),
    routers=routers,
    subscriptions=subscriptions,
    workers=workers,
    relay=True,
    identity=True,
)
