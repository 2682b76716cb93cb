"""Operator registry routes: devices and sites of the caller's workspace (``/api/v1/...``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from libs.events.http import ApiError

from ..config import Settings
from ..domain import (
    BulkDevices,
    DevicePatch,
    NewDevice,
    NewSite,
    Site,
    bulk_names,
    is_id,
    parse,
    patch_fields,
)
from ..handlers import NewDeviceSpec
from ..presence import InvalidTiming, parse_timing, timing_from
from ..store import DeviceFilter
from .common import (
    Api,
    Limit,
    Offset,
    body,
    clean_query,
    device_json,
    device_path,
    domain_errors,
    site_json,
    writer,
)

# Fields presence derives; nobody edits them.
READ_ONLY = ("status", "status_reason", "last_seen", "metrics")


def label_filter(value: str | None) -> tuple[str, str] | None:
    """``key:value`` -> ``(key, value)``."""
    if value is None:
        return None
    key, sep, val = value.partition(":")
    if not sep or not key:
        raise ApiError(400, "VALIDATION_ERROR", "label: expected key:value")
    return key, val


def router(api: Api) -> APIRouter:
    """``/api/v1/devices`` and ``/api/v1/sites`` for operators."""
    r = APIRouter()
    reg = api.registry

    @r.post("/api/v1/devices", status_code=201)
    async def create_device(request: Request) -> JSONResponse:
        op = writer(api.identity, request)
        with domain_errors():
            cmd = parse(NewDevice, await body(request))
            spec = NewDeviceSpec(
                name=cmd.name,
                device_type=cmd.device_type,
                site_id=cmd.site_id,
                groups=cmd.groups,
                labels=cmd.labels,
                metadata=cmd.metadata,
                kinds=cmd.credentials,
            )
            device, secrets = await reg.register(op.workspace_id, op.operator_id, spec)
        return JSONResponse({**device_json(device), "credentials": secrets}, status_code=201)

    @r.post("/api/v1/devices/bulk", status_code=201)
    async def create_devices(request: Request) -> JSONResponse:
        op = writer(api.identity, request)
        with domain_errors():
            cmd = parse(BulkDevices, await body(request))
            specs = [
                NewDeviceSpec(
                    name=name,
                    device_type=cmd.device_type,
                    site_id=cmd.site_id,
                    groups=cmd.groups,
                    labels=cmd.labels,
                    kinds=cmd.credentials,
                )
                for name in bulk_names(cmd.name_prefix, cmd.count, cmd.start)
            ]
            made = await reg.register_many(op.workspace_id, op.operator_id, specs)
        items = [{"device_id": d.device_id, "name": d.name, "credentials": s} for d, s in made]
        return JSONResponse({"items": items}, status_code=201)

    @r.get("/api/v1/devices")
    async def list_devices(
        request: Request,
        status: str | None = None,
        site: str | None = None,
        group: str | None = None,
        label: str | None = None,
        q: str | None = None,
        limit: Limit = 100,
        offset: Offset = 0,
    ) -> dict[str, Any]:
        op = api.identity.operator(request)
        f = DeviceFilter(
            status=clean_query(status, "status"),
            site_id=clean_query(site, "site"),
            group=clean_query(group, "group"),
            label=label_filter(clean_query(label, "label")),
            text=clean_query(q, "q"),
        )
        items, total = await reg.devices(op.workspace_id, f, limit=limit, offset=offset)
        return {"items": [device_json(d) for d in items], "total": total, "limit": limit, "offset": offset}

    @r.get("/api/v1/devices/{device_id}")
    async def get_device(device_id: str, request: Request) -> dict[str, Any]:
        op = api.identity.operator(request)
        with domain_errors():
            return device_json(await reg.device(op.workspace_id, device_path(device_id)))

    @r.get("/api/v1/devices/{device_id}/history")
    async def device_history(
        device_id: str, request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> list[dict[str, Any]]:
        op = api.identity.operator(request)
        raw = clean_query(request.query_params.get("before"), "before")
        try:
            before = datetime.fromisoformat(raw) if raw else None
        except ValueError:
            raise ApiError(400, "VALIDATION_ERROR", "before: expected an ISO 8601 time") from None
        if before is not None and before.tzinfo is None:
            before = before.replace(tzinfo=UTC)
        with domain_errors():
            rows = await reg.history(op.workspace_id, device_path(device_id), limit=limit, before=before)
        return [{**row, "at": row["at"].astimezone(UTC).isoformat()} for row in rows]

    @r.patch("/api/v1/devices/{device_id}")
    async def patch_device(device_id: str, request: Request) -> dict[str, Any]:
        op = writer(api.identity, request)
        data = await body(request)
        if isinstance(data, dict) and any(k in data for k in READ_ONLY):
            raise ApiError(400, "READ_ONLY_FIELD", "status, last_seen and metrics come from presence")
        with domain_errors():
            fields = patch_fields(parse(DevicePatch, data))
            device = await reg.update(op.workspace_id, device_path(device_id), fields, op.operator_id)
        return device_json(device)

    @r.delete("/api/v1/devices/{device_id}", status_code=204)
    async def delete_device(device_id: str, request: Request) -> Response:
        op = writer(api.identity, request)
        with domain_errors():
            await reg.delete(op.workspace_id, device_path(device_id), op.operator_id)
        return Response(status_code=204)

    @r.get("/api/v1/sites")
    async def list_sites(request: Request) -> list[dict[str, Any]]:
        op = api.identity.operator(request)
        return [site_json(s) for s in await reg.sites(op.workspace_id)]

    async def create_site(request: Request) -> JSONResponse:
        op = writer(api.identity, request)
        with domain_errors():
            cmd = parse(NewSite, await body(request))
            site = Site(
                cmd.site_id, op.workspace_id, cmd.name, cmd.location, cmd.description, datetime.now(UTC)
            )
            await reg.create_site(site, op.operator_id)
        return JSONResponse(site_json(site), status_code=201)

    # Dialect K posts to the trailing-slash form; answer both rather than redirect a POST.
    r.add_api_route("/api/v1/sites", create_site, methods=["POST"], status_code=201)
    r.add_api_route("/api/v1/sites/", create_site, methods=["POST"], status_code=201)

    @r.get("/api/v1/sites/{site_id}")
    async def get_site(site_id: str, request: Request) -> dict[str, Any]:
        op = api.identity.operator(request)
        if not is_id(site_id):
            raise ApiError(404, "SITE_NOT_FOUND", "site not found")
        with domain_errors():
            return site_json(await reg.site(op.workspace_id, site_id))

    @r.get("/api/v1/presence/settings")
    async def presence_settings(request: Request) -> dict[str, Any]:
        op = api.identity.operator(request)
        return await timing_json(op.workspace_id)

    @r.put("/api/v1/presence/settings")
    async def set_presence_settings(request: Request) -> dict[str, Any]:
        op = api.identity.operator(request)
        op.require("owner")
        try:
            interval, timeout = parse_timing(await body(request))
        except InvalidTiming as exc:
            raise ApiError(400, "VALIDATION_ERROR", str(exc)) from None
        await reg.set_presence_timing(op.workspace_id, interval, timeout, op.operator_id)
        return await timing_json(op.workspace_id)

    async def timing_json(workspace_id: str) -> dict[str, Any]:
        interval, timeout = await reg.presence_timing(workspace_id)
        s = api.host.settings
        assert isinstance(s, Settings)
        defaults = {
            "heartbeat_interval_s": s.presence_interval_s,
            "heartbeat_timeout_s": s.presence_timeout_s,
        }
        effective = timing_from({"heartbeat_interval_s": interval, "heartbeat_timeout_s": timeout}, defaults)
        return {
            "heartbeat_interval_s": interval,
            "heartbeat_timeout_s": timeout,
            "effective": {
                "heartbeat_interval_s": effective.interval_s,
                "heartbeat_timeout_s": effective.timeout_s,
            },
            "defaults": defaults,
        }

    return r
