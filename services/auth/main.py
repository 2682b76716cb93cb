"""Composition root of the auth service."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import cast

from fastapi import APIRouter

from libs.events.service import ServiceHost, ServiceSpec

from . import api
from .config import Settings
from .consumers import subscriptions
from .handlers import Auth, Passwords
from .projections import audit_projection


def build_spec(name: str = "auth", passwords: Callable[[Settings], Passwords] = Passwords) -> ServiceSpec:
    """The service's spec; ``name`` is also its Postgres schema (tests use their own)."""

    def routers(host: ServiceHost) -> list[APIRouter]:
        return api.routers(Auth(host, passwords(cast(Settings, host.settings))))

    return ServiceSpec(
        name=name,
        settings_cls=Settings,
        migrations_dir=Path(__file__).with_name("migrations"),
        routers=routers,
        subscriptions=subscriptions,
        projections=lambda host: {"audit": audit_projection(host)},
        relay=True,
        identity=True,
    )


SPEC = build_spec()
