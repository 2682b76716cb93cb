"""HTTP routes of telemetry: heartbeats of dialects S, K and the agent; the latest-metrics read."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from libs.events.batching import OutcomeUnknown, PublisherClosed
from libs.events.http import ROUTE_KEY, ApiError, BodyLimit, DeviceCaller, Identity
from libs.events.service import ServiceHost

from .domain import InvalidHeartbeat, chart_query, parse_agent, parse_agent_batch, parse_k, parse_s
from .handlers import Charts, Ingest, ingest_of

_encode = msgspec.json.Encoder().encode
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
        self.raw_max_span = timedelta(hours=float(getattr(s, "chart_raw_max_span_h", 24)))

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


def refusal(exc: Exception) -> Exception:
    """What an ingestion use-case's exception answers: invalid bodies are 4xx (mostly 400; 403 for
    another device's body); an unwritten heartbeat is 503, and one Redis had but did not confirm in
    time is 504 (it may be written). Anything else is returned as is (a bug: 500)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, InvalidHeartbeat):
        return ApiError(exc.status, exc.code, exc.message)
    if isinstance(exc, OutcomeUnknown):
        return ApiError(504, "OUTCOME_UNKNOWN", f"heartbeat may or may not be stored ({exc})")
    if isinstance(exc, PublisherClosed | ConnectionError | OSError | TimeoutError) or type(
        exc
    ).__module__.startswith("redis"):
        return ApiError(503, "UNAVAILABLE", f"heartbeat not stored ({type(exc).__name__})")
    return exc


Reply = tuple[int, dict[str, Any]]


def limited(api: Api, caller: DeviceCaller) -> DeviceCaller:
    """429 when the device is over its heartbeat rate (checked before the body is read)."""
    if not api.ingest.allow(caller):
        raise ApiError(429, "RATE_LIMITED", "too many heartbeats from this device", {"Retry-After": "1"})
    return caller


async def s_heartbeat(api: Api, request: Request) -> Reply:
    """Dialect S heartbeat."""
    caller = limited(api, api.identity.device_session(request))
    beat = parse_s(await api.body(request))
    at = await api.ingest.accept(caller, beat)
    stamp = at.isoformat().replace("+00:00", "Z")
    reply = {"success": True, "acknowledged": True, "timestamp": stamp, "nextHeartbeat": api.interval_ms}
    if beat.status != "offline" and (commands := await api.ingest.piggyback(caller, at)):
        reply["commands"] = commands
    return 200, reply


async def k_device(api: Api, request: Request) -> DeviceCaller:
    """The device behind the K headers; an unknown pair is rate-limited per client address first.

    A pair missing from the identity index makes ``device_api_key`` re-read the identity streams
    (a Redis read that every caller waits for in turn), so anyone could make the service do that
    at will: the limit comes before it. A known pair is found in memory and never counted.
    """
    device_id, key = request.headers.get("x-device-id"), request.headers.get("x-api-key")
    if device_id and key and api.identity.feed.index.credential(key, "api_key", device_id) is None:
        address = request.client.host if request.client else "unknown"
        if not api.ingest.allow_unknown_key(address):
            raise ApiError(
                429, "RATE_LIMITED", "too many unknown API keys from this address", {"Retry-After": "1"}
            )
    return await api.identity.device_api_key(request)


async def k_metrics(api: Api, request: Request) -> Reply:
    """Dialect K metrics (a heartbeat too); exactly 201."""
    caller = limited(api, await k_device(api, request))
    beat = parse_k(await api.body(request), caller.device_id)
    await api.ingest.accept(caller, beat)
    return 201, {"success": True, "message": "Metrics recorded"}


async def agent_heartbeat(api: Api, request: Request) -> Reply:
    """The agent's heartbeat with its sequence number."""
    caller = limited(api, api.identity.device_session(request))
    beat = parse_agent(await api.body(request), now=datetime.now(UTC))
    await api.ingest.accept(caller, beat)
    return 200, {"acknowledged": True, "seq": beat.seq, "nextHeartbeat": api.interval_ms}


async def agent_backfill(api: Api, request: Request) -> Reply:
    """A batch of the agent's heartbeats sent late (backfill)."""
    caller = limited(api, api.identity.device_session(request))
    beats = parse_agent_batch(await api.body(request), now=datetime.now(UTC))
    n = await api.ingest.accept_many(caller, beats)
    return 200, {"acknowledged": n, "last_seq": max(b.seq or 0 for b in beats)}


INGESTION: dict[str, Callable[[Api, Request], Awaitable[Reply]]] = {
    "/api/v1/device/heartbeat": s_heartbeat,
    "/api/v1/analytics/device-metrics": k_metrics,
    "/api/v1/agent/heartbeat": agent_heartbeat,
    "/api/v1/agent/heartbeats": agent_backfill,
}


def ingestion_router(api: Api) -> APIRouter:
    """``POST`` routes of every heartbeat dialect."""
    r = APIRouter()
    for path, use_case in INGESTION.items():
        status = 201 if use_case is k_metrics else 200
        r.add_api_route(path, _route(api, use_case), methods=["POST"], status_code=status)
    return r


def _route(api: Api, use_case: Callable[[Api, Request], Awaitable[Reply]]) -> Callable[..., Awaitable[Any]]:
    async def route(request: Request) -> JSONResponse:
        try:
            status, body = await use_case(api, request)
        except Exception as exc:
            raise refusal(exc) from None
        return JSONResponse(body, status_code=status)

    return route


class FastIngest:
    """ASGI wrapper serving the ingestion ``POST`` routes without the framework's per-request layers.

    The hot path: the same use-cases and error shapes as the routes, about 2-3x the requests per
    second of going through FastAPI. Every other request goes to ``app``.
    """

    def __init__(self, api: Api, app: ASGIApp) -> None:
        self.api, self.app = api, app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        use_case = INGESTION.get(scope.get("path", "")) if scope["type"] == "http" else None
        if use_case is None or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        scope[ROUTE_KEY] = scope["path"]  # a fixed path: it is its own route template (for metrics)
        try:
            status, body = await use_case(self.api, Request(scope, receive))
            headers: list[tuple[bytes, bytes]] = []
            payload = _encode(body)
        except Exception as error:
            exc = refusal(error)
            if not isinstance(exc, ApiError):
                raise
            status, payload = exc.status, _encode({"error": {"code": exc.code, "message": exc.message}})
            headers = [(k.lower().encode(), v.encode()) for k, v in (exc.headers or {}).items()]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def fast_app(host: ServiceHost, app: ASGIApp) -> ASGIApp:
    """``app`` with the ingestion routes served by :class:`FastIngest` (still under the body limit)."""
    api = Api(host)
    max_bytes = int(getattr(host.settings, "max_body_bytes", 1_048_576))
    return BodyLimit(FastIngest(api, app), max_bytes=max_bytes)


async def visible_device(api: Api, request: Request, device_id: str) -> str:
    """The operator's workspace if the device is in it; 404 otherwise (no existence leak)."""
    op = api.identity.operator(request)
    if not device_id or len(device_id) > 128 or not set(device_id) <= _ID_OK:
        raise ApiError(404, "DEVICE_NOT_FOUND", "device not found")
    devices = api.identity.feed.index.devices
    if devices.get(device_id) != op.workspace_id:
        await api.identity.feed.catch_up()
    if devices.get(device_id) != op.workspace_id:
        raise ApiError(404, "DEVICE_NOT_FOUND", "device not found")
    return op.workspace_id


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
        workspace_id = await visible_device(api, request, device_id)
        params = {k: v for k, v in request.query_params.items() if k in _QUERY}
        try:
            q = chart_query(params, now=datetime.now(UTC), raw_max_span=api.raw_max_span)
        except InvalidHeartbeat as exc:
            raise ApiError(exc.status, exc.code, exc.message) from None
        series, backfilled = await api.charts.chart(device_id, workspace_id, q)
        reply = {
            "device_id": device_id,
            "from": q.start.isoformat(),
            "to": q.end.isoformat(),
            "step": q.step,
            "agg": q.agg,
            "series": series,
        }
        if q.step == "raw":  # rollup buckets mix live and backfilled readings: no flag there
            reply["backfilled"] = backfilled
        return JSONResponse(reply)

    return r


def routers(host: ServiceHost) -> list[APIRouter]:
    """Every router of the telemetry service."""
    api = Api(host)
    return [ingestion_router(api), query_router(api)]
