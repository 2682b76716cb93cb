"""The dispatcher as an ASGI app, driven in memory (no sockets, no services started)."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from starlette.websockets import WebSocket

from fleet.dispatcher import ASGIApp, Dispatcher


def service_app(name: str) -> FastAPI:
    """A stand-in for a service: it reports what it saw."""
    app = FastAPI()

    @app.get("/readyz")
    async def readyz(request: Request) -> dict[str, str]:
        return {"service": name, "path": request.url.path, "root_path": request.scope["root_path"]}

    @app.post("/api/v1/device/heartbeat")
    async def heartbeat(request: Request) -> dict[str, str]:
        return {"service": name, "body": (await request.body()).decode()}

    @app.websocket("/ws")
    async def ws(socket: WebSocket) -> None:
        await socket.accept()
        await socket.send_text(f"hello from {name}")
        await socket.close()

    return app


def dispatcher(checks: Mapping[str, Mapping[str, str]]) -> Dispatcher:
    apps: dict[str, ASGIApp] = {name: service_app(name) for name in checks}

    async def probe() -> Mapping[str, Mapping[str, str]]:
        return checks

    return Dispatcher(apps, probe, routes=[("/api/v1/device/heartbeat", "telemetry"), ("/ws", "gateway")])


READY = {"device": {"redis": "ok"}, "telemetry": {"redis": "ok"}, "gateway": {"redis": "ok"}}


@pytest.fixture
def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=dispatcher(READY)), base_url="http://fleet")


async def test_health_and_aggregate_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "services": READY}
    assert (await client.post("/healthz")).status_code == 405


async def test_readiness_is_503_when_any_check_fails() -> None:
    checks = {**READY, "device": {"redis": "ok", "postgres": "unreachable (OSError)"}}
    transport = httpx.ASGITransport(app=dispatcher(checks))
    async with httpx.AsyncClient(transport=transport, base_url="http://fleet") as client:
        r = await client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["status"] == "not_ready"
    assert r.json()["services"]["device"]["postgres"] == "unreachable (OSError)"


async def test_service_paths_reach_the_service_below_its_prefix(client: httpx.AsyncClient) -> None:
    r = await client.get("/_services/device/readyz")
    assert r.status_code == 200
    assert r.json() == {
        "service": "device",
        "path": "/_services/device/readyz",
        "root_path": "/_services/device",
    }
    assert (await client.get("/_services/device/nothing")).status_code == 404


async def test_table_routes_forward_unchanged(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/device/heartbeat", content=b"beat")
    assert r.json() == {"service": "telemetry", "body": "beat"}


async def test_unrouted_paths_are_a_json_404(client: httpx.AsyncClient) -> None:
    r = await client.get("/no/such/thing")
    assert r.status_code == 404
    assert r.json() == {"error": {"code": "NOT_FOUND", "message": "no route for /no/such/thing"}}
    assert (await client.get("/_services/nosuch/readyz")).status_code == 404


async def websocket(app: ASGIApp, path: str) -> list[dict[str, Any]]:
    """Open a WebSocket on ``app`` in memory; returns every message the app sent."""
    incoming = [{"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1000}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    scope = {
        "type": "websocket",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "scheme": "ws",
        "subprotocols": [],
        "server": ("fleet", 80),
        "client": ("127.0.0.1", 5000),
        "asgi": {"version": "3.0"},
    }
    await app(scope, receive, send)
    return sent


async def test_websockets_are_routed_and_unrouted_ones_refused() -> None:
    app = dispatcher(READY)
    sent = await websocket(app, "/ws")
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert sent[1]["text"] == "hello from gateway"
    assert await websocket(app, "/nowhere") == [{"type": "websocket.close", "code": 1008}]


def test_a_table_naming_an_absent_service_is_rejected() -> None:
    async def probe() -> Mapping[str, Mapping[str, str]]:
        return {}

    with pytest.raises(ValueError, match="unknown service"):
        Dispatcher({}, probe, routes=[("/api", "device")])
