"""HTTP routes of the registry: operator REST, dialect K registration and sites, dialect W REST."""

from __future__ import annotations

from fastapi import APIRouter

from libs.events.service import ServiceHost

from ..handlers import Registry
from . import enrolment, k, operator, w
from .common import Api


def routers(host: ServiceHost) -> list[APIRouter]:
    """Every router of the device service (K's fixed paths first: they share a prefix)."""
    api = Api(host, Registry(host))
    return [k.router(api), operator.router(api), w.router(api), enrolment.router(api)]
