"""Enrolment tokens (operators) and agent enrolment (``POST /api/v1/agent/enrol``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from libs.events.http import ApiError

from ..domain import AgentEnrol, EnrolmentToken, NewEnrolmentToken, parse
from ..enrolment_handlers import Enrolment
from .common import Api, body, domain_errors, writer
from .k import limit_anonymous

_TOKEN_ID_MAX = 64


def token_json(t: EnrolmentToken, now: datetime) -> dict[str, Any]:
    """A token as operators see it (never its secret)."""
    return {
        "token_id": t.token_id,
        "workspace_id": t.workspace_id,
        "name": t.name,
        "site_id": t.site_id,
        "device_type": t.device_type,
        "groups": t.groups,
        "labels": t.labels,
        "max_uses": t.max_uses,
        "uses": t.uses,
        "expires_at": t.expires_at.astimezone(UTC).isoformat(),
        "created_at": t.created_at.astimezone(UTC).isoformat(),
        "created_by": t.created_by,
        "revoked_at": t.revoked_at.astimezone(UTC).isoformat() if t.revoked_at else None,
        "state": t.state(now),
    }


def router(api: Api) -> APIRouter:
    """Token management for owners and operators (viewers: 403), and the agents' enrol route."""
    r = APIRouter()
    enrolment = Enrolment(api.registry)

    @r.post("/api/v1/enrolment-tokens", status_code=201)
    async def create_token(request: Request) -> JSONResponse:
        op = writer(api.identity, request)
        with domain_errors():
            cmd = parse(NewEnrolmentToken, await body(request))
            token, secret = await enrolment.create(op.workspace_id, op.operator_id, cmd)
        reply = {**token_json(token, datetime.now(UTC)), "token": secret}  # shown once
        return JSONResponse(reply, status_code=201)

    @r.get("/api/v1/enrolment-tokens")
    async def list_tokens(request: Request) -> list[dict[str, Any]]:
        # tokens mint devices: like device credentials, only those who may mint see them
        op = writer(api.identity, request)
        now = datetime.now(UTC)
        return [token_json(t, now) for t in await enrolment.tokens(op.workspace_id)]

    @r.delete("/api/v1/enrolment-tokens/{token_id}", status_code=204)
    async def revoke_token(token_id: str, request: Request) -> Response:
        op = writer(api.identity, request)
        if not token_id or len(token_id) > _TOKEN_ID_MAX or not token_id.isprintable():
            raise ApiError(404, "ENROLMENT_TOKEN_NOT_FOUND", "enrolment token not found")
        with domain_errors():
            await enrolment.revoke(op.workspace_id, token_id, op.operator_id)
        return Response(status_code=204)

    @r.post("/api/v1/agent/enrol", status_code=201)
    async def enrol(request: Request) -> JSONResponse:
        await limit_anonymous(api, request, always=True)  # before the body is read or a token looked up
        with domain_errors():
            cmd = parse(AgentEnrol, await body(request))
            done = await enrolment.enrol(cmd)
        reply = {
            "device_id": done.device_id,
            "device_secret": done.device_secret,
            "workspace_id": done.workspace_id,
        }
        return JSONResponse(reply, status_code=201)

    return r
