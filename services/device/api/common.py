"""What the registry's routes share: JSON shapes, error mapping, body parsing, the caller."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from fastapi import Query, Request

from libs.events.http import ApiError, Identity, Operator, json_body
from libs.events.ratelimit import RateLimiter
from libs.events.service import ServiceHost

from ..domain import RESERVED_IDS, Device, DomainError, Site, is_id
from ..handlers import Registry

WRITERS = ("owner", "operator")
_STATUS = {"invalid": 400, "unauthorized": 401, "not_found": 404, "conflict": 409, "forbidden": 403}
Limit = Annotated[int, Query(ge=0, le=1000)]
Offset = Annotated[int, Query(ge=0, le=2**31 - 1)]


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def device_json(d: Device) -> dict[str, Any]:
    """A device as operator routes show it (never a secret)."""
    return {
        "device_id": d.device_id,
        "workspace_id": d.workspace_id,
        "name": d.name,
        "device_type": d.device_type,
        "site_id": d.site_id,
        "groups": d.groups,
        "labels": d.labels,
        "metadata": d.metadata,
        "disabled": d.disabled,
        "status": d.status,
        "status_reason": d.status_reason,
        "last_seen": _iso(d.last_seen),
        "metrics": d.metrics,
        "ip_address": d.ip_address,
        "created_at": _iso(d.created_at),
        "updated_at": _iso(d.updated_at),
    }


def w_device_json(d: Device) -> dict[str, Any]:
    """A device as dialect W shows it."""
    return {
        "id": d.device_id,
        "workspace_id": d.workspace_id,
        "name": d.name,
        "device_type": d.device_type,
        "status": d.status,
        "last_seen": _iso(d.last_seen),
        "device_metadata": d.metadata,
        "created_at": _iso(d.created_at),
        "updated_at": _iso(d.updated_at),
    }


def site_json(s: Site) -> dict[str, Any]:
    """A site."""
    return {
        "site_id": s.site_id,
        "name": s.name,
        "location": s.location,
        "description": s.description,
        "workspace_id": s.workspace_id,
        "created_at": _iso(s.created_at),
    }


async def body(request: Request) -> Any:
    """The JSON body; 400 for a missing, malformed or out-of-range one (``1e999``)."""
    try:
        return await json_body(request)
    except msgspec.ValidationError:
        raise ApiError(400, "BAD_REQUEST", "the body is not valid JSON") from None


@contextlib.contextmanager
def domain_errors() -> Iterator[None]:
    """Map a refused decision to the HTTP error shape."""
    try:
        yield
    except DomainError as exc:
        raise ApiError(_STATUS[exc.kind], exc.code, exc.message) from None


def device_path(device_id: str) -> str:
    """A path id that cannot name a device is simply not found (and never reaches SQL)."""
    if not is_id(device_id) or device_id in RESERVED_IDS:
        raise ApiError(404, "DEVICE_NOT_FOUND", "device not found")
    return device_id


def clean_query(value: str | None, name: str) -> str | None:
    """A query parameter Postgres can take (no NUL, bounded)."""
    if value is not None and ("\x00" in value or len(value) > 200):
        raise ApiError(400, "VALIDATION_ERROR", f"{name}: invalid value")
    return value


def writer(identity: Identity, request: Request, *, workspace_required: bool = False) -> Operator:
    """An operator allowed to write in the request's workspace (viewer: 403)."""
    op = identity.operator(request, workspace_required=workspace_required)
    op.require(*WRITERS)
    return op


class Api:
    """The registry's routes over one host."""

    def __init__(self, host: ServiceHost, registry: Registry) -> None:
        self.host, self.registry = host, registry
        self._limiter: RateLimiter | None = None

    @property
    def identity(self) -> Identity:
        """The host's identity (the service runs with ``identity=True``)."""
        assert self.host.identity is not None
        return self.host.identity

    def limiter(self) -> RateLimiter:
        """Per-address limit of unauthenticated registrations."""
        if self._limiter is None:
            assert self.host.redis is not None
            per_min = getattr(self.host.settings, "enrol_per_minute", 30)
            prefix = self.host.stream("ratelimit:device:enrol:")
            self._limiter = RateLimiter(self.host.redis, prefix, limit=per_min, window_s=60)
        return self._limiter

    async def open_enrolment(self, workspace_id: str) -> bool:
        """Whether the workspace lets devices register without a token (read up to now if unknown)."""
        index = self.identity.feed.index
        if workspace_id not in index.open_enrolment:
            await self.identity.feed.catch_up()
        return bool(index.open_enrolment.get(workspace_id, False))
