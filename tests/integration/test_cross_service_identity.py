"""Auth and device side by side, as separate hosts sharing only Redis streams: a device created in
the registry authenticates at once, and a revoked credential fails on every service within 1 s."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest
from starlette.requests import Request

from libs.events.http import ApiError
from libs.events.identity import TokenError
from libs.events.service import ServiceHost
from services.auth.config import Settings as AuthSettings
from services.auth.main import build_spec
from services.device.config import Settings as DeviceSettings
from services.device.main import SPEC as DEVICE

from ..conftest import REDIS_URL
from .helpers import eventually

KEY = "k" * 40


@pytest.fixture
async def platform(database_url, prefix):
    schema = f"auth_{uuid.uuid4().hex[:8]}"
    auth = ServiceHost(
        build_spec(schema),
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
    for h in (auth, device):
        await h.start()
    stop = asyncio.Event()
    workers = [asyncio.create_task(h.run_worker(stop)) for h in (auth, device)]
    clients = [
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=h.build_app(manage_lifespan=False), client=("127.0.0.1", 5000)),
            base_url="http://t",
        )
        for h in (auth, device)
    ]
    yield auth, device, clients[0], clients[1]
    stop.set()
    await asyncio.gather(*workers)
    for c in clients:
        await c.aclose()
    for h in (auth, device):
        await h.stop()


async def test_create_use_and_revoke_across_services(platform):
    auth_host, device_host, auth, device = platform
    email = f"owner-{uuid.uuid4().hex[:8]}@example.org"
    boot = await auth.post(
        "/api/v1/auth/bootstrap", json={"email": email, "password": "pw-12345678", "workspace_name": "x"}
    )
    assert boot.status_code == 201, boot.text  # a schema of this test's own
    login = await auth.post("/api/v1/auth/login", json={"email": email, "password": "pw-12345678"})
    op = {"Authorization": f"Bearer {login.json()['access_token']}"}
    # the registry mints the device's secret and key; auth accepts the secret immediately
    created = await device.post(
        "/api/v1/devices",
        json={"name": "pi", "device_type": "raspberry_pi", "credentials": ["secret", "api_key"]},
        headers=op,
    )
    assert created.status_code == 201, created.text
    device_id, creds = created.json()["device_id"], created.json()["credentials"]
    s = await auth.post("/api/v1/device/auth", json={"deviceId": device_id, "deviceSecret": creds["secret"]})
    assert s.status_code == 200, s.text
    session = s.json()["token"]
    assert device_host.identity is not None and auth_host.identity is not None
    assert device_host.identity.claims(session).sub == device_id  # verified locally by another service
    request = httpx.Request(  # dialect K headers, as telemetry and commands will see them
        "GET", "http://t", headers={"X-Device-ID": device_id, "X-API-Key": creds["api_key"]}
    )
    from starlette.requests import Request

    def as_request(r: httpx.Request) -> Request:
        return Request(
            {"type": "http", "headers": [(k.lower().encode(), v.encode()) for k, v in r.headers.items()]}
        )

    assert (await device_host.identity.device_api_key(as_request(request))).device_id == device_id

    # revoke both kinds at auth: every service refuses them within a second
    started = time.monotonic()
    for kind in ("secret", "api_key"):
        r = await auth.delete(f"/api/v1/devices/{device_id}/credentials", params={"kind": kind}, headers=op)
        assert r.status_code == 204, r.text

    def session_dead() -> bool:
        try:
            device_host.identity.claims(session)  # type: ignore[union-attr]
        except TokenError:
            return True
        return False

    async def key_dead() -> bool:
        try:
            await device_host.identity.device_api_key(as_request(request))  # type: ignore[union-attr]
        except ApiError as exc:
            return exc.status == 401
        return False

    await eventually(session_dead, 1.0)
    await eventually(key_dead, 1.0)
    again = await auth.post(
        "/api/v1/device/auth", json={"deviceId": device_id, "deviceSecret": creds["secret"]}
    )
    assert again.status_code == 401
    assert time.monotonic() - started < 1.0
