"""Dialect K registration: ``POST /api/v1/devices/sites/{site_id}/devices`` (open enrolment or operator)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from libs.events.http import ApiError

from ..domain import ENROLMENT, EnrolDevice, Site, check_ip, is_id, parse
from ..handlers import NewDeviceSpec
from .common import WRITERS, Api, body, domain_errors


async def enroller(api: Api, request: Request, site: Site) -> str:
    """Who registers: the operator behind a Bearer token, or ``enrolment`` if the workspace is open."""
    if request.headers.get("authorization"):
        op = api.identity.operator(request)
        role = op.claims.roles.get(site.workspace_id)
        if role is None:
            raise ApiError(404, "SITE_NOT_FOUND", f"site {site.site_id} not found")
        if role not in WRITERS:
            raise ApiError(403, "FORBIDDEN", f"needs role {' or '.join(WRITERS)}")
        return op.operator_id
    if not await api.open_enrolment(site.workspace_id):
        raise ApiError(401, "UNAUTHORIZED", "this site needs an operator or enrolment token")
    return ENROLMENT


async def limit_anonymous(api: Api, request: Request, *, always: bool = False) -> None:
    """Count an unauthenticated attempt (or, ``always``, any attempt) against the client address,
    before any other work."""
    if request.headers.get("authorization") and not always:
        return
    address = request.client.host if request.client else "unknown"
    verdict = await api.limiter().hit(address)
    if not verdict.allowed:
        raise ApiError(
            429,
            "RATE_LIMITED",
            "too many registrations from this address",
            {"Retry-After": str(verdict.retry_after)},
        )


def router(api: Api) -> APIRouter:
    """The K registration route."""
    r = APIRouter()

    @r.post("/api/v1/devices/sites/{site_id}/devices", status_code=201)
    async def register(site_id: str, request: Request) -> JSONResponse:
        await limit_anonymous(api, request)
        if not is_id(site_id):
            raise ApiError(404, "SITE_NOT_FOUND", "site not found")
        with domain_errors():
            site = await api.registry.site(None, site_id)
            by = await enroller(api, request, site)
            cmd = parse(EnrolDevice, await body(request))
            check_ip(cmd.ip_address)
            spec = NewDeviceSpec(
                device_id=cmd.device_id,
                name=cmd.name,
                device_type=cmd.device_type,
                site_id=site.site_id,
                metadata={"config": cmd.config} if cmd.config else {},
                ip_address=cmd.ip_address,
                kinds=("api_key",),
            )
            device, secrets = await api.registry.register(site.workspace_id, by, spec)
        reply = {
            "message": "Device registered successfully",
            "device_id": device.device_id,
            "site_id": site.site_id,
            "api_key": secrets["api_key"],
        }
        return JSONResponse(reply, status_code=201)

    return r
