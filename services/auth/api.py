"""HTTP routes of the auth service: JSON in, handlers, JSON out; domain errors become HTTP errors."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

import msgspec
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from libs.events.http import ApiError, Operator

from . import domain as d
from . import handlers as h
from .handlers import Auth

T = TypeVar("T")

Short = Annotated[str, msgspec.Meta(max_length=1024)]
Text = Annotated[str, msgspec.Meta(max_length=4096)]


class BootstrapBody(msgspec.Struct, kw_only=True):
    email: Short
    password: Text
    workspace_name: Short | None = None
    open_enrolment: bool = False


class LoginBody(msgspec.Struct, kw_only=True):
    email: Short
    password: Text
    workspace_id: Short | None = None


class PasswordBody(msgspec.Struct, kw_only=True):
    current_password: Text
    new_password: Text


class WorkspaceBody(msgspec.Struct, kw_only=True):
    name: Short
    open_enrolment: bool = False


class WorkspacePatch(msgspec.Struct, kw_only=True):
    name: Short | None = None
    open_enrolment: bool | None = None


class OperatorBody(msgspec.Struct, kw_only=True):
    email: Short
    role: Short
    password: Text | None = None


class RoleBody(msgspec.Struct, kw_only=True):
    role: Short


class CredentialBody(msgspec.Struct, kw_only=True):
    kind: Short


class DeviceAuthBody(msgspec.Struct, kw_only=True):
    deviceId: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]  # wire name
    deviceSecret: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]  # wire name


_STATUS: dict[type[d.DomainError], int] = {
    d.Invalid: 400,
    d.Unauthorized: 401,
    d.Forbidden: 403,
    d.NotFound: 404,
    d.Conflict: 409,
    d.RateLimited: 429,
}


async def parse(request: Request, cls: type[T]) -> T:
    """The JSON body as ``cls``; 400 for a missing, malformed or ill-typed one."""
    raw = await request.body()
    if not raw.strip():
        raise ApiError(400, "BAD_REQUEST", "a JSON body is required")
    try:
        return msgspec.json.decode(raw, type=cls)
    except msgspec.ValidationError as exc:
        raise ApiError(400, "VALIDATION_ERROR", str(exc)) from None
    # msgspec lets invalid UTF-8 through as UnicodeDecodeError; deep nesting raises RecursionError
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "BAD_REQUEST", "the body is not valid JSON") from None


async def run(work: Awaitable[T]) -> T:
    """Await a use-case, turning a refusal into its HTTP error."""
    try:
        return await work
    except d.DomainError as exc:
        status = _STATUS.get(type(exc), 400)
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, d.RateLimited) else None
        raise ApiError(status, exc.code, exc.message, headers) from None


def client_of(request: Request) -> str:
    """The caller's address (rate-limit key and login audit)."""
    return request.client.host if request.client else "unknown"


def created(body: Any) -> JSONResponse:
    """201 with a JSON body."""
    return JSONResponse(body, status_code=201)


def no_content() -> Response:
    """204."""
    return Response(status_code=204)


def routers(auth: Auth) -> list[APIRouter]:
    """Every router of the service."""
    return [session_router(auth), workspace_router(auth), credential_router(auth), audit_router(auth)]


def _operator(auth: Auth, request: Request) -> Operator:
    return auth.identity.operator(request)


def session_router(auth: Auth) -> APIRouter:
    """Bootstrap, operator sessions, password, and device sessions (dialect S)."""
    r = APIRouter()

    @r.post("/api/v1/auth/bootstrap", status_code=201)
    async def bootstrap(request: Request) -> JSONResponse:
        b = await parse(request, BootstrapBody)
        return created(await run(h.bootstrap(auth, b.email, b.password, b.workspace_name, b.open_enrolment)))

    @r.post("/api/v1/auth/login")
    async def login(request: Request) -> dict[str, Any]:
        b = await parse(request, LoginBody)
        return await run(h.login(auth, b.email, b.password, b.workspace_id, client_of(request)))

    @r.post("/api/v1/auth/logout", status_code=204)
    async def logout(request: Request) -> Response:
        await run(h.logout(auth, _operator(auth, request)))
        return no_content()

    @r.get("/api/v1/auth/me")
    async def me(request: Request) -> dict[str, Any]:
        return await run(h.me(auth, _operator(auth, request)))

    @r.post("/api/v1/auth/password", status_code=204)
    async def password(request: Request) -> Response:
        op = _operator(auth, request)
        b = await parse(request, PasswordBody)
        await run(h.change_password(auth, op, b.current_password, b.new_password))
        return no_content()

    @r.post("/api/v1/device/auth")
    async def device_auth(request: Request) -> dict[str, Any]:
        b = await parse(request, DeviceAuthBody)
        return await run(h.device_auth(auth, b.deviceId, b.deviceSecret, client_of(request)))

    return r


def workspace_router(auth: Auth) -> APIRouter:
    """Workspaces and their operators."""
    r = APIRouter()

    @r.get("/api/v1/workspaces")
    async def list_workspaces(request: Request) -> list[dict[str, Any]]:
        return await run(h.list_workspaces(auth, _operator(auth, request)))

    @r.post("/api/v1/workspaces", status_code=201)
    async def create_workspace(request: Request) -> JSONResponse:
        op = _operator(auth, request)
        b = await parse(request, WorkspaceBody)
        return created(await run(h.create_workspace(auth, op, b.name, b.open_enrolment)))

    @r.get("/api/v1/workspaces/{workspace_id}")
    async def get_workspace(request: Request, workspace_id: str) -> dict[str, Any]:
        return await run(h.get_workspace(auth, _operator(auth, request), workspace_id))

    @r.patch("/api/v1/workspaces/{workspace_id}")
    async def update_workspace(request: Request, workspace_id: str) -> dict[str, Any]:
        op = _operator(auth, request)
        b = await parse(request, WorkspacePatch)
        return await run(h.update_workspace(auth, op, workspace_id, b.name, b.open_enrolment))

    @r.get("/api/v1/operators")
    async def list_operators(request: Request) -> list[dict[str, Any]]:
        return await run(h.list_members(auth, _operator(auth, request)))

    @r.post("/api/v1/operators", status_code=201)
    async def add_operator(request: Request) -> JSONResponse:
        op = _operator(auth, request)
        b = await parse(request, OperatorBody)
        return created(await run(h.add_member(auth, op, b.email, b.role, b.password)))

    @r.patch("/api/v1/operators/{operator_id}")
    async def change_role(request: Request, operator_id: str) -> dict[str, Any]:
        op = _operator(auth, request)
        b = await parse(request, RoleBody)
        return await run(h.change_role(auth, op, operator_id, b.role))

    @r.delete("/api/v1/operators/{operator_id}", status_code=204)
    async def remove_operator(request: Request, operator_id: str) -> Response:
        await run(h.remove_member(auth, _operator(auth, request), operator_id))
        return no_content()

    return r


def credential_router(auth: Auth) -> APIRouter:
    """Device credentials minted by operators."""
    r = APIRouter()

    @r.post("/api/v1/devices/{device_id}/credentials", status_code=201)
    async def issue(request: Request, device_id: str) -> JSONResponse:
        op = _operator(auth, request)
        b = await parse(request, CredentialBody)
        return created(await run(h.issue_credential(auth, op, device_id, b.kind)))

    @r.delete("/api/v1/devices/{device_id}/credentials", status_code=204)
    async def revoke(
        request: Request, device_id: str, kind: Annotated[str, Query(max_length=64)] = ""
    ) -> Response:
        await run(h.revoke_credentials(auth, _operator(auth, request), device_id, kind))
        return no_content()

    return r


def audit_router(auth: Auth) -> APIRouter:
    """The workspace's audit log."""
    r = APIRouter()

    @r.get("/api/v1/audit")
    async def audit(
        request: Request,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
        action: Annotated[str | None, Query(max_length=128)] = None,
    ) -> list[dict[str, Any]]:
        return await run(h.audit(auth, _operator(auth, request), limit, offset, action))

    return r
