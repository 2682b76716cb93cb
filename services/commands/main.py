"""Composition root of the commands service."""

from __future__ import annotations

from pathlib import Path

from libs.events.service import ServiceSpec

from .config import Settings

SPEC = ServiceSpec(
    name="commands",
    settings_cls=Settings,
    migrations_dir=Path(__file__).with_name("migrations"),
    relay=True,
)
