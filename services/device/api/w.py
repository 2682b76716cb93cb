"""Dialect W REST: ``/api/devices`` of the workspace named by ``X-Workspace-ID`` (required)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from libs.events.http import Operator

from ..domain import WDevicePatch, WNewDevice, parse, patch_fields
from ..handlers import NewDeviceSpec
from ..store import DeviceFilter
from .common import Api, Limit, Offset, body, device_path, domain_errors, w_device_json, writer


def router(api: Api) -> APIRouter:
    """The W device routes (its command routes belong to the commands service)."""
    r = APIRouter()
    reg = api.registry

    def reader(request: Request) -> Operator:
        return api.identity.operator(request, workspace_required=True)

    @r.post("/api/devices", status_code=201)
    async def create(request: Request) -> JSONResponse:
        op = writer(api.identity, request, workspace_required=True)
        with domain_errors():
            cmd = parse(WNewDevice, await body(request))
            spec = NewDeviceSpec(
                name=cmd.name, device_type=cmd.device_type, metadata=cmd.metadata or {}, kinds=("token",)
            )
            device, secrets = await reg.register(op.workspace_id, op.operator_id, spec)
        return JSONResponse({**w_device_json(device), "token": secrets["token"]}, status_code=201)

    @r.get("/api/devices")
    async def list_devices(request: Request, limit: Limit = 100, offset: Offset = 0) -> list[dict[str, Any]]:
        op = reader(request)
        items, _ = await reg.devices(op.workspace_id, DeviceFilter(), limit=limit, offset=offset)
        return [w_device_json(d) for d in items]

    @r.get("/api/devices/{device_id}")
    async def get(device_id: str, request: Request) -> dict[str, Any]:
        op = reader(request)
        with domain_errors():
            return w_device_json(await reg.device(op.workspace_id, device_path(device_id)))

    @r.patch("/api/devices/{device_id}")
    async def patch(device_id: str, request: Request) -> dict[str, Any]:
        op = writer(api.identity, request, workspace_required=True)
        with domain_errors():
            fields = patch_fields(parse(WDevicePatch, await body(request)))
            device = await reg.update(op.workspace_id, device_path(device_id), fields, op.operator_id)
        return w_device_json(device)

    @r.delete("/api/devices/{device_id}", status_code=204)
    async def delete(device_id: str, request: Request) -> Response:
        op = writer(api.identity, request, workspace_required=True)
        with domain_errors():
            await reg.delete(op.workspace_id, device_path(device_id), op.operator_id)
        return Response(status_code=204)

    @r.get("/api/devices/{device_id}/status")
    async def status(device_id: str, request: Request) -> dict[str, Any]:
        op = reader(request)
        with domain_errors():
            d = await reg.device(op.workspace_id, device_path(device_id))
        return {
            "id": d.device_id,
            "name": d.name,
            "status": d.status,
            "status_reason": d.status_reason,
            "last_seen": w_device_json(d)["last_seen"],
            "is_online": d.status == "online",
        }

    return r
