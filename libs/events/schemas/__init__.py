"""Versioned event schemas and the explicit registry of every tag.

This package imports only msgspec and the standard library (an import-linter contract).
"""

from __future__ import annotations

from . import auth, commands, device, gateway, telemetry
from .base import Event, tag_of

Registry = dict[str, type[Event]]


def build_registry(*groups: tuple[type[Event], ...]) -> Registry:
    """Map each tag to its class; a tag defined twice is a programming error."""
    registry: Registry = {}
    for group in groups:
        for cls in group:
            tag = tag_of(cls)
            if tag in registry:
                raise ValueError(f"event tag {tag!r} is defined twice")
            registry[tag] = cls
    return registry


REGISTRY: Registry = build_registry(
    auth.EVENTS, device.EVENTS, telemetry.EVENTS, gateway.EVENTS, commands.EVENTS
)

__all__ = ["REGISTRY", "Event", "Registry", "build_registry", "tag_of"]
