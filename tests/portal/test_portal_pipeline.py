"""The portal's pipeline frame: consumer-group lag from Redis and heartbeat -> portal latency."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

from libs.events.publisher import Publisher
from libs.events.schemas.device import DeviceRegistered, DeviceStatusChanged

from .test_portal_socket import frames_until, operator, portal, serving


async def test_pipeline_frame_carries_group_lag_and_latency(database_url, prefix, r) -> None:
    with serving(database_url, prefix, portal_pipeline_s=0.1) as port:
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
