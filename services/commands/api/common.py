"""What the command routes share: JSON shapes per dialect, errors, bodies, callers and limits."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from fastapi import Query, Request

from libs.events.http import ApiError, DeviceCaller, Identity, Operator
from libs.events.service import ServiceHost

from ..dialects import MAX_BODY, DeviceRateLimit, DomainError
from ..domain import Command, is_command_id
from ..handlers import Commands

WRITERS = ("owner", "operator")
_STATUS = {"invalid": 400, "not_found": 404, "conflict": 409, "forbidden": 403, "too_large": 413}
_ID_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-")
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0, le=2**31 - 1)]


def iso(value: datetime | None) -> str | None:
    """A UTC ISO 8601 time, or None."""
    return value.astimezone(UTC).isoformat() if value is not None else None


def operator_json(c: Command) -> dict[str, Any]:
    """A command as operator routes show it: K's fields first, then the whole lifecycle."""
    return {
        "command_id": c.command_id,
        "command_type": c.command_type,
        "payload": c.parameters,
        "status": c.status,
        "created_at": iso(c.created_at),
        "device_id": c.device_id,
        "workspace_id": c.workspace_id,
        "parameters": c.parameters,
        "state": c.state,
        "expires_at": iso(c.expires_at),
        "sent_at": iso(c.sent_at),
        "delivered_at": iso(c.delivered_at),
        "finished_at": iso(c.finished_at),
        "attempts": c.attempts,
        "via": c.via,
        "result": c.result,
        "error": c.error,
        "output": c.output,
        "reported_status": c.reported_status,
        "executed_at": iso(c.executed_at),
        "duration_ms": c.duration_ms,
        "created_by": c.created_by,
        "finished_by": c.finished_by,
        "idempotency_key": c.idempotency_key,
    }


def w_json(c: Command) -> dict[str, Any]:
    """A command as dialect W shows it."""
    return {
        "id": c.command_id,
        "device_id": c.device_id,
        "command_type": c.command_type,
        "parameters": c.parameters,
        "status": c.status,
        "result": c.result,
        "error_message": c.error,
        "created_at": iso(c.created_at),
        "sent_at": iso(c.sent_at),
        "completed_at": iso(c.finished_at),
        "expires_at": iso(c.expires_at),
    }


def k_json(c: Command) -> dict[str, Any]:
    """A command as dialect K lists it (every open state is "pending")."""
    return {
        "command_id": c.command_id,
        "command_type": c.command_type,
        "payload": c.parameters,
        "status": c.k_status,
        "created_at": iso(c.created_at),
    }


def k_command_json(c: Command) -> dict[str, Any]:
    """The command K's status update answers with."""
    return {**k_json(c), "device_id": c.device_id, "result": c.result, "completed_at": iso(c.finished_at)}


@contextlib.contextmanager
def domain_errors() -> Iterator[None]:
    """Map a refused decision to the HTTP error shape."""
    try:
        yield
    except DomainError as exc:
        raise ApiError(_STATUS[exc.kind], exc.code, exc.message) from None


def command_path(command_id: str) -> str:
    """A path id that cannot name a command is simply not found (and never reaches SQL)."""
    command_id = command_id.lower()
    if not is_command_id(command_id):
        raise ApiError(404, "COMMAND_NOT_FOUND", "command not found")
    return command_id


def writer(identity: Identity, request: Request, *, workspace_required: bool = False) -> Operator:
    """An operator allowed to write in the request's workspace (viewer: 403)."""
    op = identity.operator(request, workspace_required=workspace_required)
    op.require(*WRITERS)
    return op


class Api:
    """The command routes over one host."""

    def __init__(self, host: ServiceHost, commands: Commands) -> None:
        self.host, self.commands = host, commands
        rate = int(getattr(host.settings, "device_rate_per_s", 10))
        self.devices = DeviceRateLimit(rate)
        self.unknown_keys = DeviceRateLimit(rate)

    @property
    def identity(self) -> Identity:
        """The host's identity (the service runs with ``identity=True``)."""
        assert self.host.identity is not None
        return self.host.identity

    async def body(self, request: Request) -> Any:
        """The JSON body, at most MAX_BODY bytes (413 above, 400 if missing or malformed)."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY:
            raise ApiError(413, "PAYLOAD_TOO_LARGE", f"body over {MAX_BODY} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                raise ApiError(413, "PAYLOAD_TOO_LARGE", f"body over {MAX_BODY} bytes")
            chunks.append(chunk)
        raw = b"".join(chunks)
        if not raw:
            raise ApiError(400, "BAD_REQUEST", "a JSON body is required")
        try:
            return msgspec.json.decode(raw)
        # ValidationError: 1e999; UnicodeDecodeError: bad UTF-8; RecursionError: nesting too deep
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
            raise ApiError(400, "BAD_REQUEST", "the body is not valid JSON") from None

    async def visible_device(self, op: Operator, device_id: str) -> str:
        """The device if it is registered in the operator's workspace; 404 otherwise (no leak)."""
        if not device_id or len(device_id) > 128 or not set(device_id) <= _ID_OK:
            raise ApiError(404, "DEVICE_NOT_FOUND", "device not found")
        devices = self.identity.feed.index.devices
        if devices.get(device_id) != op.workspace_id:
            await self.identity.feed.catch_up()
        if devices.get(device_id) != op.workspace_id:
            raise ApiError(404, "DEVICE_NOT_FOUND", "device not found")
        return device_id

    def limited(self, caller: DeviceCaller) -> DeviceCaller:
        """429 when the device is over its request rate (checked before the body is read)."""
        if not self.devices.allow(caller.device_id, time.monotonic()):
            raise ApiError(429, "RATE_LIMITED", "too many requests from this device", {"Retry-After": "1"})
        return caller

    async def k_device(self, request: Request) -> DeviceCaller:
        """The device behind the K headers; unknown pairs are limited per client address first
        (a miss re-reads the identity streams, which nobody should trigger at will)."""
        device_id, key = request.headers.get("x-device-id"), request.headers.get("x-api-key")
        if device_id and key and self.identity.feed.index.credential(key, "api_key", device_id) is None:
            address = request.client.host if request.client else "unknown"
            if not self.unknown_keys.allow(address, time.monotonic()):
                raise ApiError(
                    429, "RATE_LIMITED", "too many unknown API keys from this address", {"Retry-After": "1"}
                )
        return self.limited(await self.identity.device_api_key(request))
