"""HTTP conventions every service shares: JSON errors, body limits, and who is calling.

Errors are ``{"error": {"code", "message"}}``; bad input is 400 (never a 500, never half-written).
Operators send ``Authorization: Bearer``; devices a session (``X-Device-Session``, ``X-Device-Token``
or ``Authorization: Bearer``) or an API key pair (``X-Device-ID`` + ``X-API-Key``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from opentelemetry import trace
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import metrics
from .identity import Claims, Credential, Signer, TokenError
from .identity_feed import IdentityFeed
from .tracing import SERVICE_ATTR, extract_context, tracer, tracing_on


class ApiError(Exception):
    """An error with its HTTP status and machine-readable code."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The JSON error body."""
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    429: "RATE_LIMITED",
}


def install_error_handlers(app: FastAPI) -> None:
    """Map ApiError, HTTP errors and validation errors to the JSON error shape."""

    async def api_error(_r: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    async def http_error(_r: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _CODES.get(exc.status_code, "ERROR")
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    async def invalid(_r: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = (
            f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg", "invalid body"))
        )
        return error_response(400, "VALIDATION_ERROR", message)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` with 413 (declared or streamed)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and not declared.isdigit():
            await error_response(400, "BAD_REQUEST", "invalid Content-Length")(scope, receive, send)
            return
        if declared is not None and int(declared) > self.max_bytes:
            await _too_large(scope, receive, send, self.max_bytes)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise ApiError(413, "PAYLOAD_TOO_LARGE", f"body over {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)


async def _too_large(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    resp = error_response(413, "PAYLOAD_TOO_LARGE", f"body over {limit} bytes")
    await resp(scope, receive, send)


ROUTE_KEY = "fleet.route"  # a scope key naming the route template when no router matched (a fast path)


class Observed:
    """ASGI middleware: each HTTP request counted and timed per route template, under a server span.

    The template comes from the router (``scope["route"]``) or a fast path's ``scope["fleet.route"]``
    once the app answered; a request no route matched is ``unmatched``. Raw paths and query strings
    are never recorded (dialect W's path carries a token).
    """

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        span = self._span(scope) if tracing_on() else None
        try:
            if span is None:
                await self.app(scope, receive, sending)
            else:
                with trace.use_span(span, end_on_exit=False, record_exception=False):
                    await self.app(scope, receive, sending)
        finally:
            method, route = scope.get("method", ""), route_of(scope)
            metrics.REQUESTS.record(self.service, method, route, status, time.perf_counter() - started)
            if span is not None:
                span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(trace.StatusCode.ERROR)
                span.end()

    def _span(self, scope: Scope) -> trace.Span:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())}
        parent = extract_context({k: v for k, v in headers.items() if k in ("traceparent", "tracestate")})
        return tracer().start_span(
            scope.get("method", "HTTP"),
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes={SERVICE_ATTR: self.service, "http.request.method": scope.get("method", "")},
        )


def route_of(scope: Scope) -> str:
    """The route template that answered (``/api/v1/devices/{device_id}``), or ``unmatched``."""
    route = scope.get("route")
    path = getattr(route, "path", None) or scope.get(ROUTE_KEY)
    return str(path) if path else "unmatched"


@dataclass(frozen=True)
class Operator:
    """The calling operator, in the workspace this request acts on."""

    operator_id: str
    workspace_id: str
    role: str
    session_id: str
    claims: Claims

    def require(self, *roles: str) -> None:
        """403 unless the operator's role in this workspace is one of ``roles``."""
        if self.role not in roles:
            raise ApiError(403, "FORBIDDEN", f"needs role {' or '.join(roles)}")


@dataclass(frozen=True)
class DeviceCaller:
    """The calling device."""

    device_id: str
    workspace_id: str
    credential_id: str | None
    session_id: str | None = None


class Identity:
    """Verifies callers with the signing key and the identity index (no call to auth)."""

    def __init__(self, signer: Signer, feed: IdentityFeed, clock: Callable[[], float] = time.time) -> None:
        self.signer, self.feed, self.clock = signer, feed, clock

    def claims(self, token: str) -> Claims:
        """Signature, expiry and revocation checked; TokenError otherwise."""
        claims = self.signer.verify(token, now=self.clock())
        self.feed.index.check(claims)
        return claims

    def operator(self, request: Request, *, workspace_required: bool = False) -> Operator:
        """The operator behind ``Authorization: Bearer``; ``X-Workspace-ID`` picks the workspace."""
        token = _bearer(request)
        try:
            claims = self.claims(token or "")
        except TokenError:
            raise ApiError(401, "UNAUTHORIZED", "missing, invalid or expired token") from None
        if claims.typ != "operator":
            raise ApiError(401, "UNAUTHORIZED", "missing, invalid or expired token")
        wanted = request.headers.get("x-workspace-id", "").strip() or None
        if wanted is None and workspace_required:
            raise ApiError(400, "WORKSPACE_REQUIRED", "X-Workspace-ID header is required")
        workspace = wanted or claims.ws
        role = claims.roles.get(workspace)
        if role is None:
            raise ApiError(404, "NOT_FOUND", "workspace not found")
        return Operator(claims.sub, workspace, role, claims.jti, claims)

    def device_session(self, request: Request) -> DeviceCaller:
        """The device behind a session token header; 401 INVALID_TOKEN otherwise."""
        token = (
            request.headers.get("x-device-session")
            or request.headers.get("x-device-token")
            or _bearer(request)
            or ""
        )
        try:
            claims = self.claims(token)
        except TokenError:
            raise ApiError(401, "INVALID_TOKEN", "missing, invalid, expired or revoked token") from None
        if claims.typ != "device":
            raise ApiError(401, "INVALID_TOKEN", "missing, invalid, expired or revoked token")
        return DeviceCaller(claims.sub, claims.ws, claims.cid, claims.jti)

    async def device_secret(self, secret: str, kind: str, device_id: str | None = None) -> Credential | None:
        """The live credential for a presented secret, reading the streams up to now on a miss."""
        cred = self.feed.index.credential(secret, kind, device_id)
        if cred is None:
            await self.feed.catch_up()
            cred = self.feed.index.credential(secret, kind, device_id)
        return cred

    async def device_api_key(self, request: Request) -> DeviceCaller:
        """The device behind ``X-Device-ID`` + ``X-API-Key`` (dialect K); 401 otherwise."""
        device_id, key = request.headers.get("x-device-id"), request.headers.get("x-api-key")
        cred = await self.device_secret(key, "api_key", device_id) if device_id and key else None
        if cred is None:
            raise ApiError(401, "INVALID_API_KEY", "unknown device or wrong API key")
        return DeviceCaller(cred.device_id, cred.workspace_id, cred.credential_id)


def _bearer(request: Request) -> str | None:
    value = request.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def json_body(request: Request) -> Any:
    """The request body as JSON; 400 for a missing or malformed one."""
    import msgspec

    raw = await request.body()
    if not raw:
        raise ApiError(400, "BAD_REQUEST", "a JSON body is required")
    try:
        return msgspec.json.decode(raw)
    # ValidationError: 1e999; UnicodeDecodeError: bad UTF-8; RecursionError: nesting too deep
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "BAD_REQUEST", "the body is not valid JSON") from None


Handler = Callable[..., Awaitable[Any]]
