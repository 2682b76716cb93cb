"""Request metrics label by route template (never a raw path), and ``fleet up`` serves one scrape."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import Receive, Scope, Send

from fleet.dispatcher import Dispatcher
from libs.events import metrics
from libs.events.http import ROUTE_KEY, Observed


def app() -> Observed:
    inner = FastAPI()

    @inner.get("/api/devices/{token}/state")
    async def state(token: str) -> dict[str, str]:
        return {"ok": "yes"}

    async def fast(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/fast":
            scope[ROUTE_KEY] = "/fast"
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await inner(scope, receive, send)

    return Observed(fast, "unit-svc")


def requests_seen() -> dict[tuple[str, str, str], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            if s.name == "fleet_http_requests_total" and s.labels["service"] == "unit-svc":
                out[(s.labels["method"], s.labels["route"], s.labels["status"])] = s.value
    return out


async def test_route_templates_not_paths() -> None:
    before = requests_seen()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app()), base_url="http://t") as c:
        assert (await c.get("/api/devices/SECRET-TOKEN-123/state?x=1")).status_code == 200
        assert (await c.get("/nowhere/SECRET-TOKEN-456")).status_code == 404
        assert (await c.post("/fast")).status_code == 204
    seen = requests_seen()

    def grew(key: tuple[str, str, str]) -> float:
        return seen.get(key, 0) - before.get(key, 0)

    assert grew(("GET", "/api/devices/{token}/state", "200")) == 1
    assert grew(("GET", "unmatched", "404")) == 1
    assert grew(("POST", "/fast", "204")) == 1
    assert b"SECRET-TOKEN" not in metrics.render()


async def test_gauges_register_once() -> None:
    metrics.gauge("fleet_unit_gauge", "first", (), lambda: [({}, 1.0)])
    metrics.gauge("fleet_unit_gauge", "second", (), lambda: [({}, 2.0)])  # a second host: ignored
    text = metrics.render().decode()
    assert "fleet_unit_gauge 1.0" in text and "fleet_unit_gauge 2.0" not in text


async def test_fleet_up_serves_one_scrape() -> None:
    scrapes = []

    async def scrape() -> tuple[bytes, str]:
        scrapes.append(1)
        return b"fleet_x 1.0\n", metrics.CONTENT_TYPE

    async def probe() -> dict[str, dict[str, str]]:
        return {}

    dispatcher = Dispatcher({"gateway": app()}, probe, routes=[("/", "gateway")], metrics=scrape)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=dispatcher), base_url="http://t") as c:
        resp = await c.get("/metrics")
    assert resp.status_code == 200 and resp.text == "fleet_x 1.0\n"
    assert resp.headers["content-type"].startswith("text/plain")
    assert scrapes == [1]
