"""HTTP routes of the command queue: operators, dialect W, and devices (K polling, K and S results)."""

from __future__ import annotations

from fastapi import APIRouter

from libs.events.service import ServiceHost

from ..handlers import Commands
from . import device, operator, w
from .common import Api


def routers(host: ServiceHost) -> list[APIRouter]:
    """Every router of the commands service (K's fixed ``/pending`` path first)."""
    api = Api(host, Commands(host))
    return [device.router(api), operator.router(api), w.router(api)]
