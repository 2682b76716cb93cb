"""HTTP routes of telemetry: heartbeats of dialects S, K and the agent; the latest-metrics read."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from libs.events.batching import PublisherClosed
from libs.events.http import ApiError, Identity
from libs.events.service import ServiceHost

from .domain import InvalidHeartbeat, chart_query, parse_agent, parse_agent_batch, parse_k, parse_s
from .handlers import Charts, Ingest, ingest_of

_QUERY = frozenset({"from", "to", "step", "agg", "name"})
_ID_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-")


class Api:
    """The routes' view of one host."""

    def __init__(self, host: ServiceHost) -> None:
        self.host = host
        self.charts = Charts(host)
        s = host.settings
        self.max_body = int(getattr(s, "ingest_max_body_bytes", 100_000))
        self.interval_ms = int(getattr(s, "heartbeat_interval_ms", 30_000))

    @property
    def identity(self) -> Identity:
        """The host's identity (telemetry runs with ``identity=True``)."""
        assert self.host.identity is not None
        return self.host.identity

    @property
    def ingest(self) -> Ingest:
        """The host's ingestion use-cases."""
        return ingest_of(self.host)

    async def body(self, request: Request) -> Any:
        """The JSON body, at most ``max_body`` bytes (413 above, 400 if malformed)."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            raise ApiError(413, "PAYLOAD_TOO_LARGE", f"body over {self.max_body} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                raise ApiError(413, "PAYLOAD_TOO_LARGE", f"body over {self.max_body} bytes")
            chunks.append(chunk)
        raw = b"".join(chunks)
        if not raw:
            raise ApiError(400, "BAD_REQUEST", "a JSON body is required")
        try:
            return msgspec.json.decode(raw)
        # ValidationError: 1e999; UnicodeDecodeError: bad UTF-8; RecursionError: nesting too deep
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
            raise ApiError(400, "BAD_REQUEST", "the body is not valid JSON") from None


@contextlib.asynccontextmanager
async def refusals() -> AsyncIterator[None]:
    """Invalid bodies are 400 (403 for another device's body); an unwritten heartbeat is 503."""
    try:
        yield
    except InvalidHeartbeat as exc:
        raise ApiError(403 if exc.code == "DEVICE_MISMATCH" else 400, exc.code, exc.message) from None
    except ApiError:
        raise
    except (PublisherClosed, ConnectionError, OSError, TimeoutError) as exc:
        raise ApiError(503, "UNAVAILABLE", f"heartbeat not stored ({type(exc).__name__})") from None
    except Exception as exc:
        if type(exc).__module__.startswith("redis"):
            raise ApiError(503, "UNAVAILABLE", f"heartbeat not stored ({type(exc).__name__})") from None
        raise


def ingestion_router(api: Api) -> APIRouter:
    """``POST`` routes of every heartbeat dialect."""
    r = APIRouter()

    @r.post("/api/v1/device/heartbeat")
    async def s_heartbeat(request: Request) -> JSONResponse:
        caller = api.identity.device_session(request)
        async with refusals():
            beat = parse_s(await api.body(request))
            at = await api.ingest.accept(caller, beat)
        reply = {
            "success": True,
            "acknowledged": True,
            "timestamp": at.isoformat().replace("+00:00", "Z"),
            "nextHeartbeat": api.interval_ms,
        }
        return JSONResponse(reply)

    @r.post("/api/v1/analytics/device-metrics", status_code=201)
    async def k_metrics(request: Request) -> JSONResponse:
        caller = await api.identity.device_api_key(request)
        async with refusals():
            beat = parse_k(await api.body(request), caller.device_id)
            await api.ingest.accept(caller, beat)
        return JSONResponse({"success": True, "message": "Metrics recorded"}, status_code=201)

    @r.post("/api/v1/agent/heartbeat")
    async def agent_heartbeat(request: Request) -> JSONResponse:
        caller = api.identity.device_session(request)
        async with refusals():
            beat = parse_agent(await api.body(request))
            await api.ingest.accept(caller, beat)
        return JSONResponse({"acknowledged": True, "seq": beat.seq, "nextHeartbeat": api.interval_ms})

    @r.post("/api/v1/agent/heartbeats")
    async def agent_backfill(request: Request) -> JSONResponse:
        caller = api.identity.device_session(request)
        async with refusals():
            beats = parse_agent_batch(await api.body(request))
            n = await api.ingest.accept_many(caller, beats)
        return JSONResponse({"acknowledged": n, "last_seq": max(b.seq or 0 for b in beats)})

    return r


async def visible_device(api: Api, request: Request, device_id: str) -> str:
    """The device's id if it is in the operator's workspace; 404 otherwise (no existence leak)."""
    op = api.identity.operator(request)
    if not device_id or len(device_id) > 128 or not set(device_id) <= _ID_OK:
        raise ApiError(404, "DEVICE_NOT_FOUND", "device not found")
    devices = api.identity.feed.index.devices
    if devices.get(device_id) != op.workspace_id:
        await api.identity.feed.catch_up()
    if devices.get(device_id) != op.workspace_id:
        raise ApiError(404, "DEVICE_NOT_FOUND", "device not found")
    return device_id


def query_router(api: Api) -> APIRouter:
    """Operator reads of telemetry."""
    r = APIRouter()

    @r.get("/api/v1/devices/{device_id}/latest")
    async def latest(device_id: str, request: Request) -> Response:
        await visible_device(api, request, device_id)
        cached = await api.ingest.latest(device_id)
        if cached is None:
            raise ApiError(404, "NO_RECENT_METRICS", "no heartbeat from this device in the cache window")
        return JSONResponse({"device_id": device_id, **cached})

    @r.get("/api/v1/devices/{device_id}/metrics")
    async def metrics(device_id: str, request: Request) -> Response:
        await visible_device(api, request, device_id)
        op = api.identity.operator(request)
        params = {k: v for k, v in request.query_params.items() if k in _QUERY}
        try:
            q = chart_query(params, now=datetime.now(UTC))
        except InvalidHeartbeat as exc:
            raise ApiError(400, exc.code, exc.message) from None
        series = await api.charts.series(device_id, op.workspace_id, q)
        reply = {
            "device_id": device_id,
            "from": q.start.isoformat(),
            "to": q.end.isoformat(),
            "step": q.step,
            "agg": q.agg,
            "series": series,
        }
        return JSONResponse(reply)

    return r


def routers(host: ServiceHost) -> list[APIRouter]:
    """Every router of the telemetry service."""
    api = Api(host)
    return [ingestion_router(api), query_router(api)]
