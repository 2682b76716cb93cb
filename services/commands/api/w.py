"""Dialect W command routes (``X-Workspace-ID`` required): queue, list newest first, read one."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from libs.events.http import ApiError

from .common import Api, command_path, domain_errors, w_json, writer
from .operator import queue


def router(api: Api) -> APIRouter:
    """``/api/devices/{id}/command`` (and ``/control``), ``/api/devices/{id}/commands[/{cid}]``."""
    r = APIRouter()
    cmds = api.commands

    async def create(device_id: str, request: Request) -> JSONResponse:
        op = writer(api.identity, request, workspace_required=True)
        return await queue(api, request, op, device_id, shape="w")

    for path in ("/api/devices/{device_id}/command", "/api/devices/{device_id}/control"):
        r.add_api_route(path, create, methods=["POST"], status_code=201)

    @r.get("/api/devices/{device_id}/commands")
    async def history(
        device_id: str, request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 50
    ) -> list[dict[str, Any]]:
        op = api.identity.operator(request, workspace_required=True)
        await api.visible_device(op, device_id)
        return [w_json(c) for c in await cmds.history(op.workspace_id, device_id, limit=limit, offset=0)]

    @r.get("/api/devices/{device_id}/commands/{command_id}")
    async def get(device_id: str, command_id: str, request: Request) -> dict[str, Any]:
        op = api.identity.operator(request, workspace_required=True)
        await api.visible_device(op, device_id)
        with domain_errors():
            c = await cmds.command(op.workspace_id, command_path(command_id))
        if c.device_id != device_id:
            raise ApiError(404, "COMMAND_NOT_FOUND", "command not found")
        return w_json(c)

    return r
