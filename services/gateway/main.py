"""Composition root of the gateway service: device sockets, the command feed behind them, and the portal."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from libs.events.service import ServiceHost, ServiceSpec, Task
from libs.events.settings import ServiceSettings

from .config import Settings
from .handlers import run_gateway
from .portal import portal_background, portal_routers
from .ws import device_sockets


def background(host: ServiceHost) -> list[Task]:
    """The command feed and the batching publisher run beside the sockets in every serving process."""

    async def run(stop: asyncio.Event) -> None:
        await run_gateway(host, stop)

    return [run, *portal_background(host)]


def routers(host: ServiceHost) -> list[Any]:
    """The portal socket and the portal page (device sockets are served by ``device_sockets``)."""
    return portal_routers(host)


def server(settings: ServiceSettings) -> dict[str, Any]:
    """uvicorn's WebSocket limits: frame size (the protocol layer refuses bigger ones) and keepalive."""
    assert isinstance(settings, Settings)
    return {
        "ws_max_size": settings.max_frame_bytes,
        "ws_ping_interval": settings.ws_ping_interval_s or None,
        "ws_ping_timeout": settings.ws_ping_timeout_s or None,
        "ws_per_message_deflate": settings.ws_compression,
    }


SPEC = ServiceSpec(
    name="gateway",
    settings_cls=Settings,
    migrations_dir=Path(__file__).with_name("migrations"),
    routers=routers,
    background=background,
    server=server,
    asgi=device_sockets,
    relay=False,
    identity=True,
)
