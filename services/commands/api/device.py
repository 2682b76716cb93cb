"""Device routes: dialect K's pending list and status updates, dialect S's results."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from ..dialects import KStatus, SResult, k_report, parse, s_report
from .common import Api, command_path, domain_errors, k_command_json, k_json


def router(api: Api) -> APIRouter:
    """``GET /api/v1/devices/pending``, ``PUT /api/v1/devices/{id}/status`` and the S result."""
    r = APIRouter()
    cmds = api.commands

    @r.get("/api/v1/devices/pending")
    async def pending(request: Request) -> list[dict[str, Any]]:
        caller = await api.k_device(request)
        return [k_json(c) for c in await cmds.poll(caller.workspace_id, caller.device_id)]

    @r.put("/api/v1/devices/{command_id}/status")
    async def k_status(command_id: str, request: Request) -> dict[str, Any]:
        caller = await api.k_device(request)
        with domain_errors():
            report = k_report(parse(KStatus, await api.body(request)))
            c, _verdict = await cmds.report(
                caller.workspace_id,
                caller.device_id,
                command_path(command_id),
                report,
                via="k_http",
                foreign="forbidden",
            )
        return k_command_json(c)

    @r.post("/api/v1/device/commands/{command_id}/result")
    async def s_result(command_id: str, request: Request) -> dict[str, Any]:
        caller = api.limited(api.identity.device_session(request))
        with domain_errors():
            report = s_report(parse(SResult, await api.body(request)))
            c, verdict = await cmds.report(
                caller.workspace_id,
                caller.device_id,
                command_path(command_id),
                report,
                via="s_http",
                foreign="not_found",
            )
        return {
            "success": True,
            "acknowledged": True,
            "commandId": c.command_id,
            "status": c.status,
            "duplicate": verdict != "accepted",
        }

    return r
