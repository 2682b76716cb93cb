"""Operator routes: queue a command for a device, read a device's history and a command, cancel."""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from libs.events.http import ApiError, Operator

from ..dialects import parse
from ..domain import NewCommand, states_for
from .common import Api, Limit, Offset, command_path, domain_errors, operator_json, w_json, writer

MAX_KEY = 128


def with_header_key(cmd: NewCommand, request: Request) -> NewCommand:
    """The ``Idempotency-Key`` header, if given, is the command's key (it must match the body's)."""
    header = request.headers.get("idempotency-key")
    if header is None:
        return cmd
    if not header or len(header) > MAX_KEY or "\x00" in header:
        raise ApiError(400, "VALIDATION_ERROR", f"Idempotency-Key: 1 to {MAX_KEY} characters")
    if cmd.idempotency_key is not None and cmd.idempotency_key != header:
        raise ApiError(400, "VALIDATION_ERROR", "Idempotency-Key header and idempotency_key differ")
    return msgspec.structs.replace(cmd, idempotency_key=header)


async def queue(api: Api, request: Request, op: Operator, device_id: str, *, shape: str) -> JSONResponse:
    """Parse, check the device and queue: the shared body of the operator and W queue routes."""
    render = w_json if shape == "w" else operator_json
    with domain_errors():
        cmd = with_header_key(parse(NewCommand, await api.body(request)), request)
        await api.visible_device(op, device_id)
        status, reply = await api.commands.queue(
            op.workspace_id, device_id, cmd, op.operator_id, shape=shape, render=render
        )
    return JSONResponse(reply, status_code=status)


def router(api: Api) -> APIRouter:
    """``/api/v1/devices/{id}/commands`` and ``/api/v1/commands/{id}``."""
    r = APIRouter()
    cmds = api.commands

    @r.post("/api/v1/devices/{device_id}/commands", status_code=201)
    async def create(device_id: str, request: Request) -> JSONResponse:
        op = writer(api.identity, request)
        return await queue(api, request, op, device_id, shape="operator")

    @r.get("/api/v1/devices/{device_id}/commands")
    async def history(
        device_id: str, request: Request, limit: Limit = 50, offset: Offset = 0
    ) -> list[dict[str, Any]]:
        op = api.identity.operator(request)
        await api.visible_device(op, device_id)
        items = await cmds.history(op.workspace_id, device_id, limit=limit, offset=offset)
        return [operator_json(c) for c in items]

    @r.get("/api/v1/commands")
    async def listing(
        request: Request,
        device_id: str | None = None,
        status: str | None = None,
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> list[dict[str, Any]]:
        op = api.identity.operator(request)
        with domain_errors():
            states = states_for(status) if status is not None else None
        if device_id is not None:
            await api.visible_device(op, device_id)
        items = await cmds.listing(op.workspace_id, device_id, states, limit=limit, offset=offset)
        return [operator_json(c) for c in items]

    @r.get("/api/v1/commands/{command_id}")
    async def get(command_id: str, request: Request) -> dict[str, Any]:
        op = api.identity.operator(request)
        with domain_errors():
            return operator_json(await cmds.command(op.workspace_id, command_path(command_id)))

    @r.post("/api/v1/commands/{command_id}/cancel")
    async def cancel(command_id: str, request: Request) -> dict[str, Any]:
        op = writer(api.identity, request)
        with domain_errors():
            return operator_json(await cmds.cancel(op.workspace_id, command_path(command_id), op.operator_id))

    return r
