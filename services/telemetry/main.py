"""Composition root of the telemetry service."""

from __future__ import annotations

from pathlib import Path

from libs.events.retention import RetentionPolicy
from libs.events.service import ServiceSpec

from .config import Settings

SPEC = ServiceSpec(
    name="telemetry",
    settings_cls=Settings,
    migrations_dir=Path(__file__).with_name("migrations"),
    # telemetry:* streams are trimmed below what every consumer group has acknowledged.
    retention=RetentionPolicy(interval_s=10.0),
)
