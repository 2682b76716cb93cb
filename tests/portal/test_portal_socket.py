"""Portal sockets against a real gateway process-in-thread: auth, snapshot, live deltas, isolation."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import uvicorn
import websockets
from websockets.exceptions import InvalidStatus

from libs.events.identity import Claims, Signer
from libs.events.publisher import Publisher
from libs.events.schemas.commands import CommandQueued
from libs.events.schemas.device import DeviceRegistered, DeviceStatusChanged
from libs.events.service import ServiceHost, ServiceSpec
from services.gateway.config import Settings
from services.gateway.portal import portal_background, portal_routers

from ..conftest import REDIS_URL

KEY = "portal-test-key-" + "p" * 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def gateway(database_url: str, prefix: str) -> Iterator[tuple[int, str]]:
    """A gateway serving only the portal, in a thread with its own loop (a real socket server)."""
    with serving(database_url, prefix) as port:
        yield port, prefix


@contextlib.contextmanager
def serving(database_url: str, prefix: str, **overrides: Any) -> Iterator[int]:
    """Serve one gateway instance (portal only) on a free port until the block ends."""
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
        **{"portal_metrics_s": 0.2, **overrides},
    )
    host = ServiceHost(spec, settings)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(host.build_app(), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "gateway did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def operator(ws: str, role: str = "owner") -> str:
    now = time.time()
    claims = Claims(
        typ="operator",
        sub="op-" + ws,
        ws=ws,
        iat=now,
        exp=int(now) + 600,
        jti=uuid.uuid4().hex,
        roles={ws: role},
    )
    return Signer(KEY).issue(claims)


@contextlib.asynccontextmanager
async def portal(port: int, token: str, **hello: object) -> AsyncIterator[websockets.ClientConnection]:
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws/portal", subprotocols=["fleet.portal.v1"]) as ws:
        await ws.send(json.dumps({"type": "hello", "token": token, **hello}))
        yield ws


async def frames_until(ws: websockets.ClientConnection, match, timeout: float = 5.0) -> list[dict]:
    seen: list[dict] = []
    async with asyncio.timeout(timeout):
        while True:
            frame = json.loads(await ws.recv())
            seen.append(frame)
            if match(frame):
                return seen


async def test_snapshot_then_live_status_commands_and_no_other_workspace(gateway, r) -> None:
    port, prefix = gateway
    a, b = "ws-a-" + uuid.uuid4().hex[:6], "ws-b-" + uuid.uuid4().hex[:6]
    pub = Publisher(r, producer="device")
    await pub.publish(
        prefix + "events:device",
        DeviceRegistered(device_id="da", workspace_id=a, name="pi", device_type="esp32"),
    )
    await pub.publish(
        prefix + "events:device",
        DeviceRegistered(device_id="db", workspace_id=b, name="other", device_type="esp32"),
    )
    async with portal(port, operator(a)) as pa, portal(port, operator(b)) as pb:
        snap = json.loads(await pa.recv())
        assert snap["type"] == "snapshot" and [d["device_id"] for d in snap["devices"]] == ["da"]
        assert [d["device_id"] for d in json.loads(await pb.recv())["devices"]] == ["db"]
        now = datetime.now(UTC)
        started = time.monotonic()
        await pub.publish(
            prefix + "events:device",
            DeviceStatusChanged(
                device_id="da",
                workspace_id=a,
                status="online",
                previous="offline",
                reason="first_heartbeat",
                at=now,
            ),
        )
        seen = await frames_until(pa, lambda f: f["type"] == "status")
        assert seen[-1]["status"] == "online" and time.monotonic() - started < 1.0
        queued = CommandQueued(
            command_id="c1",
            device_id="da",
            workspace_id=a,
            command_type="ping",
            created_at=now,
            expires_at=now,
        )
        await Publisher(r, producer="commands").publish(prefix + "events:commands", queued)
        seen = await frames_until(pa, lambda f: f["type"] == "command")
        assert seen[-1]["command"]["state"] == "queued"
        await r.set(
            prefix + "telemetry:latest:da",
            json.dumps({"t": 1, "metrics": {"cpu": 7.5}, "received_at": now.isoformat()}),
        )
        seen = await frames_until(pa, lambda f: f["type"] == "metrics")
        assert seen[-1]["metrics"] == {"cpu": 7.5}
        # b saw none of a's changes
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await pb.recv()
    await r.delete(prefix + "telemetry:latest:da")


async def test_every_gateway_instance_pushes_every_event(gateway, database_url, r) -> None:
    """Two gateways side by side on one stream prefix: a portal on each sees the same change."""
    port, prefix = gateway
    ws = "ws-" + uuid.uuid4().hex[:6]
    pub = Publisher(r, producer="device")
    await pub.publish(
        prefix + "events:device",
        DeviceRegistered(device_id="d2", workspace_id=ws, name="pi", device_type="esp32"),
    )
    with serving(database_url, prefix) as other:
        async with portal(port, operator(ws)) as one, portal(other, operator(ws)) as two:
            for sock in (one, two):
                assert [d["device_id"] for d in json.loads(await sock.recv())["devices"]] == ["d2"]
            changed = DeviceStatusChanged(
                device_id="d2",
                workspace_id=ws,
                status="online",
                previous="offline",
                reason="first_heartbeat",
                at=datetime.now(UTC),
            )
            await pub.publish(prefix + "events:device", changed)
            for sock in (one, two):
                seen = await frames_until(sock, lambda f: f["type"] == "status")
                assert seen[-1]["device_id"] == "d2" and seen[-1]["status"] == "online"


async def test_bad_token_origin_or_protocol_are_refused(gateway) -> None:
    port, _prefix = gateway
    async with portal(port, "not-a-token") as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    viewer_elsewhere = operator("ws-x")
    async with portal(port, viewer_elsewhere, workspace_id="ws-y") as ws:  # not one of the operator's
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
    with pytest.raises(InvalidStatus):
        async with websockets.connect(
            f"ws://127.0.0.1:{port}/ws/portal", subprotocols=["fleet.portal.v1"], origin="http://evil.example"
        ):
            pass
    with pytest.raises(InvalidStatus):
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws/portal"):  # no subprotocol
            pass


def test_the_portal_page_and_its_files_are_served(gateway) -> None:
    import httpx

    port, _prefix = gateway
    page = httpx.get(f"http://127.0.0.1:{port}/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert httpx.get(f"http://127.0.0.1:{port}/static/app.js").status_code == 200
    assert httpx.get(f"http://127.0.0.1:{port}/static/..%2Fportal.py").status_code == 404
