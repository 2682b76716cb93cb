"""The gateway as a real process (``python -m services.gateway api``, uvicorn's own log setup): sockets
work, the W path token never reaches its stderr, GATEWAY_MAX_FRAME_BYTES reaches uvicorn, SIGTERM exits 0."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from libs.events.identity import secret_hash
from libs.events.publisher import Publisher
from libs.events.schemas.device import DeviceRegistered, InitialCredential

from ..conftest import REDIS_URL, free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
async def test_gateway_process(database_url: str, prefix: str, tmp_path: Path):
    token, device_id = uuid.uuid4().hex * 2, f"dev-{uuid.uuid4().hex[:8]}"
    client = aioredis.Redis.from_url(REDIS_URL)
    cred = InitialCredential(credential_id="c1", kind="token", secret_sha256=secret_hash(token))
    event = DeviceRegistered(
        device_id=device_id, workspace_id="ws", name="w", device_type="esp32", credentials=[cred]
    )
    await Publisher(client, producer="device").publish(prefix + "events:device", event)
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": REDIS_URL,
        "DATABASE_URL": database_url,
        "STREAM_PREFIX": prefix,
        "SIGNING_KEY": "p" * 40,
        "PYTHONPATH": str(ROOT),
        "GATEWAY_PORT": str(port),
        "GATEWAY_MAX_FRAME_BYTES": "2000",
        "LOG_LEVEL": "DEBUG",
    }
    err_path = tmp_path / "gateway.stderr"
    with err_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.gateway", "api"], env=env, cwd=ROOT, stderr=err
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, err_path.read_text()
            await asyncio.sleep(0.1)
        async with connect(f"ws://127.0.0.1:{port}/ws/device/{token}") as ws:
            await ws.send(json.dumps({"type": "ping"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "pong"}
            await ws.send(json.dumps({"type": "ping", "pad": "x" * 3000}))
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            assert ws.close_code == 1009
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(20)
        await client.aclose()
    logged = err_path.read_text()
    assert code == 0, logged
    assert "/ws/device/<redacted>" in logged
    assert token not in logged
