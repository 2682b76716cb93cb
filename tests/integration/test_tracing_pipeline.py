"""One heartbeat, one trace: telemetry's request and append, device's presence consumer, and the
gateway's portal push share a trace id (the context rides in envelope headers through the outbox).

Telemetry, device (API and worker) and gateway run as separate hosts in this loop, sharing only Redis
and Postgres; a real portal socket is connected, so the push is the real one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from datetime import UTC, datetime

import httpx
import pytest
import uvicorn
import websockets
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from libs.events.publisher import Publisher
from libs.events.schemas.auth import WorkspaceCreated
from libs.events.service import ServiceHost
from libs.events.tracing import SERVICE_ATTR, recheck
from services.device.main import SPEC as DEVICE
from services.gateway.main import SPEC as GATEWAY
from services.telemetry.main import SPEC as TELEMETRY

from ..conftest import free_port
from .helpers import eventually, services_running, signed

KEY = "trace-key-" + "t" * 32


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    """Spans of this process: added to the installed SDK provider (one per process), or to a new one."""
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    recheck()
    return exporter


def platform(
    database_url: str, prefix: str
) -> contextlib.AbstractAsyncContextManager[dict[str, ServiceHost]]:
    specs = {"telemetry": TELEMETRY, "device": DEVICE, "gateway": GATEWAY}
    return services_running(database_url, prefix, KEY, specs, {"gateway": {"portal_flush_s": 0.01}})


async def test_a_heartbeat_is_one_trace_from_telemetry_to_the_portal(database_url, prefix, r, spans):
    ws = "ws-" + uuid.uuid4().hex[:8]
    await Publisher(r, producer="auth").publish(
        prefix + "events:auth", WorkspaceCreated(workspace_id=ws, name=ws, open_enrolment=False)
    )
    operator = signed(KEY, typ="operator", sub="op-1", ws=ws, roles={ws: "owner"})
    async with platform(database_url, prefix) as hosts:
        device_api = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=hosts["device"].asgi_app(manage_lifespan=False)),
            base_url="http://device",
        )
        telemetry_api = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=hosts["telemetry"].asgi_app(manage_lifespan=False)),
            base_url="http://telemetry",
        )
        port = free_port()
        gateway = uvicorn.Server(
            uvicorn.Config(
                hosts["gateway"].asgi_app(manage_lifespan=False),
                host="127.0.0.1",
                port=port,
                lifespan="off",
                log_level="warning",
            )
        )
        serving = asyncio.create_task(gateway.serve())
        try:
            created = await device_api.post(
                "/api/v1/devices",
                json={"name": "pi", "device_type": "raspberry_pi"},
                headers={"Authorization": f"Bearer {operator}"},
            )
            assert created.status_code == 201, created.text
            device_id = created.json()["device_id"]
            await eventually(lambda: gateway.started, 10)
            async with websockets.connect(
                f"ws://127.0.0.1:{port}/ws/portal", subprotocols=["fleet.portal.v1"]
            ) as portal:
                await portal.send(json.dumps({"type": "hello", "token": operator}))
                assert json.loads(await portal.recv())["type"] == "snapshot"
                session = signed(KEY, typ="device", sub=device_id, ws=ws, cid="cred-1")
                beat = await telemetry_api.post(
                    "/api/v1/agent/heartbeat",
                    json={"seq": 1, "sent_at": datetime.now(UTC).isoformat(), "metrics": {"cpu": 5}},
                    headers={"X-Device-Session": session},
                )
                assert beat.status_code == 200, beat.text
                async with asyncio.timeout(10):  # the portal sees the device come online
                    while True:
                        frame = json.loads(await portal.recv())
                        if frame.get("type") == "status" and frame.get("status") == "online":
                            break
        finally:
            gateway.should_exit = True
            await serving
            await device_api.aclose()
            await telemetry_api.aclose()

    def pushed() -> list[ReadableSpan]:
        return [s for s in spans.get_finished_spans() if s.name == "portal push device.status_changed.v1"]

    await eventually(lambda: bool(pushed()), 5)
    request = next(
        s
        for s in spans.get_finished_spans()
        if s.kind == trace.SpanKind.SERVER and s.attributes.get("http.route") == "/api/v1/agent/heartbeat"
    )
    assert request.name == "POST /api/v1/agent/heartbeat"
    assert "session" not in str(dict(request.attributes or {})).lower()  # no headers, no token
    one_trace = [s for s in spans.get_finished_spans() if s.context.trace_id == request.context.trace_id]
    seen = {(s.attributes.get(SERVICE_ATTR), s.kind, s.name) for s in one_trace}
    assert ("telemetry", trace.SpanKind.SERVER, "POST /api/v1/agent/heartbeat") in seen
    assert ("telemetry", trace.SpanKind.PRODUCER, "publish telemetry.heartbeat.v1") in seen
    assert ("device", trace.SpanKind.CONSUMER, "process telemetry.heartbeat.v1") in seen
    assert ("gateway", trace.SpanKind.INTERNAL, "portal push device.status_changed.v1") in seen
    push = next(s for s in one_trace if s.name == "portal push device.status_changed.v1")
    consumer = next(s for s in one_trace if s.name == "process telemetry.heartbeat.v1")
    assert push.parent is not None and push.parent.span_id == consumer.context.span_id
    assert consumer.parent is not None and consumer.parent.span_id == request.context.span_id
