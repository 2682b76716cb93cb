"""The portal's pipeline frame: consumer-group lag from Redis and heartbeat -> portal latency."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from datetime import UTC, datetime, timedelta

import uvicorn

from libs.events.publisher import Publisher
from libs.events.schemas.device import DeviceRegistered, DeviceStatusChanged
from libs.events.service import ServiceHost, ServiceSpec
from services.gateway.config import Settings
from services.gateway.portal import portal_background, portal_routers

from ..conftest import REDIS_URL
from .test_portal_socket import KEY, frames_until, free_port, operator, portal


async def test_pipeline_frame_carries_group_lag_and_latency(database_url, prefix, r) -> None:
    spec = ServiceSpec(
        name="gateway",
        settings_cls=Settings,
        routers=portal_routers,
        background=portal_background,
        identity=True,
    )
    settings = Settings(
        redis_url=REDIS_URL,
        database_url=database_url,
        stream_prefix=prefix,
        signing_key=KEY,
        portal_pipeline_s=0.1,
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            ServiceHost(spec, settings).build_app(), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive()
            await asyncio.sleep(0.02)
        ws = "ws-" + uuid.uuid4().hex[:6]
        pub = Publisher(r, producer="device")
        await pub.publish(
            prefix + "events:device",
            DeviceRegistered(device_id="dp", workspace_id=ws, name="pi", device_type="esp32"),
        )
        beats = prefix + "telemetry:heartbeats"
        await r.xgroup_create(beats, "device.presence", id="0", mkstream=True)
        for _ in range(3):
            await r.xadd(beats, {"type": "x", "envelope": "{}"})
        async with portal(port, operator(ws)) as sock:
            await frames_until(sock, lambda f: f["type"] == "snapshot")
            at = datetime.now(UTC) - timedelta(milliseconds=300)
            await pub.publish(
                prefix + "events:device",
                DeviceStatusChanged(
                    device_id="dp",
                    workspace_id=ws,
                    status="online",
                    previous="offline",
                    reason="first_heartbeat",
                    at=at,
                ),
            )

            def health(f: dict) -> bool:
                return f["type"] == "pipeline" and f["latency"] is not None

            frame = (await frames_until(sock, health))[-1]
            text = json.dumps(frame)
        groups = {(g["stream"], g["group"]): g for g in frame["groups"]}
        assert groups[("telemetry:heartbeats", "device.presence")]["lag"] == 3
        assert frame["latency"]["n"] == 1 and 300 <= frame["latency"]["p50_ms"] < 5000
        assert "dp" not in text  # no device ids in the health frame
    finally:
        server.should_exit = True
        thread.join(10)
