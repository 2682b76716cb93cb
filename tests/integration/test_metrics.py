"""``GET /metrics`` on the services: Prometheus text with request, lag, DLQ, socket and command
families after real traffic, and no family labelled by device (cardinality, and no identifiers)."""

from __future__ import annotations

import contextlib
import uuid
from datetime import UTC, datetime

import httpx
from prometheus_client.parser import text_string_to_metric_families

from libs.events.publisher import Publisher
from libs.events.schemas.auth import WorkspaceCreated
from libs.events.service import ServiceHost
from services.commands.main import SPEC as COMMANDS
from services.device.main import SPEC as DEVICE
from services.gateway.main import SPEC as GATEWAY
from services.telemetry.main import SPEC as TELEMETRY

from .helpers import eventually, services_running, signed

KEY = "metrics-key-" + "m" * 32


def running(database_url: str, prefix: str) -> contextlib.AbstractAsyncContextManager[dict[str, ServiceHost]]:
    specs = {"telemetry": TELEMETRY, "device": DEVICE, "commands": COMMANDS, "gateway": GATEWAY}
    return services_running(database_url, prefix, KEY, specs)


def client(host: ServiceHost) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=host.asgi_app(manage_lifespan=False))
    return httpx.AsyncClient(transport=transport, base_url=f"http://{host.spec.name}")


async def scrape(host: ServiceHost) -> tuple[str, dict[str, list]]:
    async with client(host) as c:
        resp = await c.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    families = {f.name: f.samples for f in text_string_to_metric_families(resp.text)}
    return resp.text, families


async def test_metrics_after_traffic(database_url, prefix, r):
    ws = "ws-" + uuid.uuid4().hex[:8]
    await Publisher(r, producer="auth").publish(
        prefix + "events:auth", WorkspaceCreated(workspace_id=ws, name=ws, open_enrolment=False)
    )
    operator = signed(KEY, typ="operator", sub="op-1", ws=ws, roles={ws: "owner"})
    async with running(database_url, prefix) as hosts:
        async with client(hosts["device"]) as device:
            created = await device.post(
                "/api/v1/devices",
                json={"name": "pi", "device_type": "raspberry_pi"},
                headers={"Authorization": f"Bearer {operator}"},
            )
            assert created.status_code == 201, created.text
            device_id = created.json()["device_id"]
            missing = await device.get(
                "/api/v1/devices/no-such-device", headers={"Authorization": "Bearer x"}
            )
            assert missing.status_code == 401
        session = signed(KEY, typ="device", sub=device_id, ws=ws, cid="cred-1")
        async with client(hosts["telemetry"]) as telemetry:
            for seq in (1, 2):
                beat = await telemetry.post(
                    "/api/v1/agent/heartbeat",
                    json={"seq": seq, "sent_at": datetime.now(UTC).isoformat()},
                    headers={"X-Device-Session": session},
                )
                assert beat.status_code == 200, beat.text
        # an undecodable entry: the presence group dead-letters it at once
        await r.xadd(prefix + "telemetry:heartbeats", {"type": "telemetry.heartbeat.v1", "envelope": "{"})
        dlq = prefix + "dlq:telemetry:heartbeats"
        await eventually(lambda: r.xlen(dlq), 10)  # type: ignore[arg-type]

        text, families = await scrape(hosts["device"])
        lag = {(s.labels["stream"], s.labels["group"]): s.value for s in families["fleet_consumer_group_lag"]}
        assert lag[(prefix + "telemetry:heartbeats", "device.presence")] == 0
        pending = {(s.labels["stream"], s.labels["group"]) for s in families["fleet_consumer_group_pending"]}
        assert (prefix + "events:gateway", "device.presence") in pending
        dlqs = {s.labels["stream"]: s.value for s in families["fleet_dlq_entries"]}
        assert dlqs[dlq] == 1
        requests = {
            (s.labels["service"], s.labels["method"], s.labels["route"], s.labels["status"]): s.value
            for s in families["fleet_http_requests"]
            if s.name == "fleet_http_requests_total"
        }
        assert requests[("device", "POST", "/api/v1/devices", "201")] >= 1
        assert requests[("device", "GET", "/api/v1/devices/{device_id}", "401")] >= 1
        assert requests[("telemetry", "POST", "/api/v1/agent/heartbeat", "200")] >= 2
        buckets = [
            s
            for s in families["fleet_http_request_duration_seconds"]
            if s.name.endswith("_count") and s.labels["route"] == "/api/v1/agent/heartbeat"
        ]
        assert buckets and buckets[0].value >= 2
        for name in ("fleet_gateway_agents", "fleet_gateway_portals", "fleet_commands_transitions"):
            assert name in families, name

        # commands counts its open commands per state for the scrape of its own API process
        _text, commands = await scrape(hosts["commands"])
        assert {s.labels["state"] for s in commands["fleet_commands_open"]} == {"queued", "sent", "delivered"}

        for samples in families.values():
            for s in samples:
                assert not {"device", "device_id", "path"} & set(s.labels), s
        assert device_id not in text and "no-such-device" not in text
