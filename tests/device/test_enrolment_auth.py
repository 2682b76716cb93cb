"""An enrolled device authenticates at the auth service (separate hosts sharing only Redis streams),
and after a retried enrolment only the new secret does; bulk-created devices authenticate too."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from libs.events.service import ServiceHost
from services.auth.config import Settings as AuthSettings
from services.auth.main import build_spec
from services.device.config import Settings as DeviceSettings
from services.device.main import SPEC as DEVICE

from ..conftest import REDIS_URL

KEY = "k" * 40
Platform = tuple[httpx.AsyncClient, httpx.AsyncClient]


@pytest.fixture
async def platform(database_url: str, prefix: str) -> AsyncIterator[Platform]:
    auth = ServiceHost(
        build_spec(f"auth_{uuid.uuid4().hex[:8]}"),
        AuthSettings(
            redis_url=REDIS_URL,
            database_url=database_url,
            stream_prefix=prefix,
            signing_key=KEY,
            argon2_time_cost=1,
            argon2_memory_kib=1024,
            argon2_parallelism=1,
        ),
    )
    device = ServiceHost(
        DEVICE,
        DeviceSettings(redis_url=REDIS_URL, database_url=database_url, stream_prefix=prefix, signing_key=KEY),
    )
    hosts = (auth, device)
    for h in hosts:
        await h.start()
        assert h.identity is not None
        h.identity.feed.block_ms = 20
    stop = asyncio.Event()
    workers = [asyncio.create_task(h.run_worker(stop)) for h in hosts]
    clients = [
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=h.build_app(manage_lifespan=False), client=("127.0.0.1", 5000)),
            base_url="http://t",
        )
        for h in hosts
    ]
    try:
        yield clients[0], clients[1]
    finally:
        stop.set()
        assert device.redis is not None
        await device.redis.xadd(prefix + "events:auth", {"type": "test.wake", "envelope": "{}"})
        await asyncio.gather(*workers)
        for c in clients:
            await c.aclose()
        for h in hosts:
            await h.stop()


async def test_enrolled_and_bulk_devices_authenticate_at_auth(platform: Platform) -> None:
    auth, device = platform
    email = f"owner-{uuid.uuid4().hex[:8]}@example.org"
    boot = await auth.post("/api/v1/auth/bootstrap", json={"email": email, "password": "pw-12345678"})
    assert boot.status_code == 201, boot.text
    login = await auth.post("/api/v1/auth/login", json={"email": email, "password": "pw-12345678"})
    op = {"Authorization": f"Bearer {login.json()['access_token']}"}
    made = await device.post("/api/v1/enrolment-tokens", json={"max_uses": 2}, headers=op)
    assert made.status_code == 201, made.text
    body = {"enrolment_token": made.json()["token"], "agent_id": "agent-1".ljust(32, "0")}

    async def device_auth(device_id: str, secret: str) -> int:
        resp = await auth.post("/api/v1/device/auth", json={"deviceId": device_id, "deviceSecret": secret})
        return resp.status_code

    first = (await device.post("/api/v1/agent/enrol", json=body)).json()
    assert await device_auth(first["device_id"], first["device_secret"]) == 200
    second = (await device.post("/api/v1/agent/enrol", json=body)).json()
    assert second["device_id"] == first["device_id"]
    assert await device_auth(second["device_id"], second["device_secret"]) == 200
    # the old secret is retired by the retry: at every verifier within a second (auth follows the stream)
    for _ in range(15):  # auth allows 20 attempts a minute per device
        if await device_auth(first["device_id"], first["device_secret"]) == 401:
            break
        await asyncio.sleep(0.07)
    else:
        raise AssertionError("the replaced secret still authenticates after 1 s")

    bulk = await device.post(
        "/api/v1/devices/bulk", json={"count": 2, "name_prefix": "b", "device_type": "virtual"}, headers=op
    )
    assert bulk.status_code == 201, bulk.text
    for item in bulk.json()["items"]:
        assert await device_auth(item["device_id"], item["credentials"]["secret"]) == 200
