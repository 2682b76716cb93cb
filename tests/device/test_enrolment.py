"""Enrolment tokens and agent enrolment (real Postgres and Redis): lifecycle, one use per agent, a
retry after a lost answer is the same device with a new secret, one 401 for every bad token, the
rate limit before any lookup, roles and workspaces."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from libs.events.schemas.device import (
    CredentialRotated,
    DeviceRegistered,
    EnrolmentTokenCreated,
    EnrolmentTokenRevoked,
    EnrolmentTokenUsed,
)
from libs.events.service import ServiceHost
from services.device.config import Settings
from services.device.main import SPEC

from ..conftest import REDIS_URL
from .conftest import World, uid

ENROL = "/api/v1/agent/enrol"
TOKENS = "/api/v1/enrolment-tokens"


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


async def new_token(world: World, ws: str, **body: Any) -> dict[str, Any]:
    resp = await world.client.post(TOKENS, json=body, headers=world.auth(ws))
    assert resp.status_code == 201, resp.text
    out: dict[str, Any] = resp.json()
    return out


def aid(name: str) -> str:
    """A valid agent id (at least 32 characters: it is half of a retry key) named after ``name``."""
    return name.ljust(32, "0")


async def enrol(world: World, token: str, agent_id: str, **extra: Any) -> httpx.Response:
    body = {"enrolment_token": token, "agent_id": aid(agent_id), **extra}
    return await world.client.post(ENROL, json=body)


async def knows(world: World, device_id: str, secret: str) -> bool:
    """Whether the device service's identity index, read up to now, accepts this secret."""
    assert world.host.identity is not None
    await world.host.identity.feed.catch_up()
    return world.host.identity.feed.index.credential(secret, "secret", device_id) is not None


async def test_token_lifecycle(world: World) -> None:
    ws = await world.workspace()
    site = await world.site(ws)
    before = datetime.now(UTC)
    made = await new_token(
        world, ws, name="rack 3", site_id=site, groups=["lab"], labels={"rack": "3"}, max_uses=5, ttl_s=600
    )
    secret = made["token"]
    assert len(secret) == 64 and int(secret, 16) >= 0
    assert made["uses"] == 0 and made["max_uses"] == 5 and made["state"] == "active"
    assert made["site_id"] == site and made["groups"] == ["lab"] and made["labels"] == {"rack": "3"}
    expires = datetime.fromisoformat(made["expires_at"])
    assert before + timedelta(seconds=599) <= expires <= datetime.now(UTC) + timedelta(seconds=601)
    defaults = await new_token(world, ws)
    assert (defaults["max_uses"], defaults["device_type"], defaults["name"]) == (1, "linux_server", None)
    ttl = datetime.fromisoformat(defaults["expires_at"]) - datetime.fromisoformat(defaults["created_at"])
    assert ttl == timedelta(days=1)

    listed = await world.client.get(TOKENS, headers=world.auth(ws))
    assert listed.status_code == 200
    assert [t["token_id"] for t in listed.json()] == [defaults["token_id"], made["token_id"]]  # newest first
    assert secret not in listed.text and all("token" not in t for t in listed.json())

    url = f"{TOKENS}/{made['token_id']}"
    assert (await world.client.delete(url, headers=world.auth(ws))).status_code == 204
    assert (await world.client.delete(url, headers=world.auth(ws))).status_code == 204  # again: no event
    [first, second] = (await world.client.get(TOKENS, headers=world.auth(ws))).json()[::-1]
    assert first["state"] == "revoked" and first["revoked_at"] and second["state"] == "active"
    missing = await world.client.delete(f"{TOKENS}/{uid('nope-')}", headers=world.auth(ws))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "ENROLMENT_TOKEN_NOT_FOUND"

    events = [e for _env, e in await world.events()]
    created = [e for e in events if isinstance(e, EnrolmentTokenCreated)]
    assert [c.token_id for c in created] == [made["token_id"], defaults["token_id"]]
    assert created[0].secret_sha256 == sha(secret) and created[0].max_uses == 5
    assert [e.token_id for e in events if isinstance(e, EnrolmentTokenRevoked)] == [made["token_id"]]
    raw = await world.host.redis.xrange(world.prefix + "events:device")  # type: ignore[union-attr]
    assert secret.encode() not in b"".join(v for _id, f in raw for v in f.values())
    assert (
        await world.count("SELECT count(*) FROM enrolment_tokens WHERE secret_sha256 = $1", sha(secret)) == 1
    )
    row = await world.host.pool.fetchrow(  # type: ignore[union-attr]
        "SELECT * FROM enrolment_tokens WHERE token_id = $1", made["token_id"]
    )
    assert secret not in str(dict(row))


@pytest.mark.parametrize(
    "body",
    [
        {"max_uses": 0},
        {"max_uses": 100_001},
        {"ttl_s": 0},
        {"ttl_s": 30 * 86400 + 1},
        {"device_type": "Not A Type"},
        {"name": " "},
        {"groups": "lab"},
        {"max_uses": "5"},
    ],
)
async def test_bad_token_requests_are_400(world: World, body: dict[str, Any]) -> None:
    ws = await world.workspace()
    resp = await world.client.post(TOKENS, json=body, headers=world.auth(ws))
    assert resp.status_code == 400, resp.text
    assert await world.count("SELECT count(*) FROM enrolment_tokens WHERE workspace_id = $1", ws) == 0


async def test_bounds_are_accepted_and_sites_checked(world: World) -> None:
    ws, other = await world.workspace(), await world.workspace()
    ok = await new_token(world, ws, max_uses=100_000, ttl_s=30 * 86400)
    assert ok["max_uses"] == 100_000
    foreign = await world.site(other)
    for site in (foreign, uid("nosite-")):
        resp = await world.client.post(TOKENS, json={"site_id": site}, headers=world.auth(ws))
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "SITE_NOT_FOUND"


async def test_viewers_are_refused_and_other_workspaces_see_nothing(world: World) -> None:
    ws, other = await world.workspace(), await world.workspace()
    made = await new_token(world, ws)
    viewer = world.auth(ws, role="viewer")
    assert (await world.client.post(TOKENS, json={}, headers=viewer)).status_code == 403
    assert (await world.client.get(TOKENS, headers=viewer)).status_code == 403
    assert (await world.client.delete(f"{TOKENS}/{made['token_id']}", headers=viewer)).status_code == 403
    operator = world.auth(ws, role="operator")
    assert (await world.client.get(TOKENS, headers=operator)).status_code == 200
    # another workspace's operator: the token does not exist for them
    foreign = world.auth(other)
    assert (await world.client.get(TOKENS, headers=foreign)).json() == []
    resp = await world.client.delete(f"{TOKENS}/{made['token_id']}", headers=foreign)
    assert resp.status_code == 404
    assert (await world.client.get(TOKENS, headers=world.auth(ws))).json()[0]["state"] == "active"
    # and the device an agent enrols is the token's workspace's only
    done = (await enrol(world, made["token"], "agent-1")).json()
    assert done["workspace_id"] == ws
    url = f"/api/v1/devices/{done['device_id']}"
    assert (await world.client.get(url, headers=foreign)).status_code == 404
    assert (await world.client.get(url, headers=world.auth(ws))).status_code == 200
    assert (await world.client.post(TOKENS, json={})).status_code == 401  # no operator at all


async def test_enrol_then_retry_is_the_same_device_with_a_new_secret(world: World) -> None:
    ws = await world.workspace()
    site = await world.site(ws)
    made = await new_token(
        world, ws, site_id=site, device_type="raspberry_pi", groups=["lab"], labels={"rack": "3"}
    )
    resp = await enrol(world, made["token"], "agent:01.a-b_c", name="Kitchen Pi")
    assert resp.status_code == 201, resp.text
    first = resp.json()
    assert set(first) == {"device_id", "device_secret", "workspace_id"}
    assert first["workspace_id"] == ws and len(first["device_secret"]) == 64
    device_id = first["device_id"]
    d = (await world.client.get(f"/api/v1/devices/{device_id}", headers=world.auth(ws))).json()
    assert (d["name"], d["device_type"], d["site_id"]) == ("Kitchen Pi", "raspberry_pi", site)
    assert d["groups"] == ["lab"] and d["labels"] == {"rack": "3"}
    assert await knows(world, device_id, first["device_secret"])

    # the answer was lost: the agent asks again with the same id (the token has no use left)
    again = await enrol(world, made["token"], "agent:01.a-b_c", name="ignored on a retry")
    assert again.status_code == 201, again.text
    second = again.json()
    assert second["device_id"] == device_id and second["device_secret"] != first["device_secret"]
    assert await knows(world, device_id, second["device_secret"])
    assert not await knows(world, device_id, first["device_secret"])  # the old secret is retired everywhere
    [token] = (await world.client.get(TOKENS, headers=world.auth(ws))).json()
    assert (token["uses"], token["state"]) == (1, "used_up")
    assert await world.count("SELECT count(*) FROM devices WHERE workspace_id = $1", ws) == 1
    # another agent finds the token used up
    other = await enrol(world, made["token"], "agent-2")
    assert other.status_code == 401 and other.json()["error"]["code"] == "INVALID_ENROLMENT_TOKEN"

    events = [e for _env, e in await world.events()]
    [registered] = [e for e in events if isinstance(e, DeviceRegistered)]
    assert registered.by == "enrolment" and registered.device_id == device_id
    [cred] = registered.credentials
    assert cred.kind == "secret" and cred.secret_sha256 == sha(first["device_secret"])
    [used] = [e for e in events if isinstance(e, EnrolmentTokenUsed)]
    assert (used.token_id, used.device_id, used.uses) == (made["token_id"], device_id, 1)
    assert used.agent_sha256 == sha(aid("agent:01.a-b_c"))
    [rotated] = [e for e in events if isinstance(e, CredentialRotated)]
    assert rotated.device_id == device_id and rotated.replaces == [cred.credential_id]
    assert rotated.secret_sha256 == sha(second["device_secret"])
    raw = await world.host.redis.xrange(world.prefix + "events:device")  # type: ignore[union-attr]
    blob = b"".join(v for _id, f in raw for v in f.values())
    for secret in (made["token"], first["device_secret"], second["device_secret"], "agent:01.a-b_c"):
        assert secret.encode() not in blob


async def test_a_token_enrols_up_to_max_uses_and_defaults_the_name(world: World) -> None:
    ws = await world.workspace()
    made = await new_token(world, ws, max_uses=3)
    results = await asyncio.gather(*(enrol(world, made["token"], f"a{i}") for i in range(5)))
    assert sorted(r.status_code for r in results) == [201, 201, 201, 401, 401]
    ids = {r.json()["device_id"] for r in results if r.status_code == 201}
    assert len(ids) == 3
    d = (await world.client.get(f"/api/v1/devices/{ids.pop()}", headers=world.auth(ws))).json()
    assert d["device_type"] == "linux_server" and d["name"].startswith("linux_server-")
    typed = await enrol(world, (await new_token(world, ws))["token"], "typed", device_type="esp32")
    d = (
        await world.client.get(f"/api/v1/devices/{typed.json()['device_id']}", headers=world.auth(ws))
    ).json()
    assert d["device_type"] == "esp32"


async def test_every_bad_token_gets_the_same_401(world: World) -> None:
    ws = await world.workspace()
    expired, revoked, used = [await new_token(world, ws) for _ in range(3)]
    assert world.host.pool is not None
    await world.host.pool.execute(
        "UPDATE enrolment_tokens SET expires_at = now() - interval '1 second' WHERE token_id = $1",
        expired["token_id"],
    )
    await world.client.delete(f"{TOKENS}/{revoked['token_id']}", headers=world.auth(ws))
    assert (await enrol(world, used["token"], "first")).status_code == 201
    answers = []
    for token in (expired["token"], revoked["token"], used["token"], "0" * 64, "not even hex", ""):
        resp = await enrol(world, token, "someone")
        answers.append((resp.status_code, resp.json()))
    want = (401, {"error": {"code": "INVALID_ENROLMENT_TOKEN", "message": "invalid enrolment token"}})
    assert answers == [want] * 6
    # a retry is refused too once its token is revoked or expired
    await world.client.delete(f"{TOKENS}/{used['token_id']}", headers=world.auth(ws))
    assert (await enrol(world, used["token"], "first")).status_code == 401
    assert await world.count("SELECT count(*) FROM devices WHERE workspace_id = $1", ws) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"agent_id": "a"},
        {"enrolment_token": "t"},
        {"enrolment_token": "t", "agent_id": ""},
        {"enrolment_token": "t", "agent_id": "x" * 129},
        {"enrolment_token": "t", "agent_id": "x" * 31},  # under 128 bits: guessable
        {"enrolment_token": "t", "agent_id": "has space"},
        {"enrolment_token": "t", "agent_id": "a\n"},
        {"enrolment_token": 5, "agent_id": "a"},
        {"enrolment_token": "t", "agent_id": "a", "device_type": "BAD"},
        [],
    ],
)
async def test_bad_enrol_bodies_are_400(world: World, body: Any) -> None:
    resp = await world.client.post(ENROL, json=body)
    assert resp.status_code == 400, resp.text


@pytest.fixture
async def strict(database_url: str, prefix: str) -> AsyncIterator[World]:
    """A device service allowing 3 anonymous enrolment attempts a minute per address."""
    settings = Settings(
        redis_url=REDIS_URL,
        database_url=database_url,
        stream_prefix=prefix,
        signing_key="x" * 40,
        enrol_per_minute=3,
    )
    host = ServiceHost(SPEC, settings)
    await host.start()
    assert host.identity is not None and host.redis is not None
    host.identity.feed.block_ms = 20
    transport = httpx.ASGITransport(app=host.build_app(manage_lifespan=False), client=("10.0.0.9", 1))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://device") as client:
            yield World(host, client, prefix)
    finally:
        await host.redis.xadd(prefix + "events:auth", {"type": "test.wake", "envelope": "{}"})
        await host.stop()


async def test_the_rate_limit_comes_before_the_token_lookup(strict: World) -> None:
    world = strict
    ws = await world.workspace()
    made = await new_token(world, ws, max_uses=10)
    for i in range(2):
        assert (await enrol(world, "0" * 64, f"guess{i}")).status_code == 401
    assert (await enrol(world, made["token"], "good")).status_code == 201
    # over the limit: even a valid token and a Bearer header are refused before anything is looked up
    resp = await world.client.post(
        ENROL, json={"enrolment_token": made["token"], "agent_id": aid("late")}, headers=world.auth(ws)
    )
    assert resp.status_code == 429 and resp.json()["error"]["code"] == "RATE_LIMITED"
    assert 1 <= int(resp.headers["Retry-After"]) <= 60
    assert (await world.client.post(ENROL, content=b"not json")).status_code == 429  # before the body
    [token] = (await world.client.get(TOKENS, headers=world.auth(ws))).json()
    assert token["uses"] == 1


def test_the_launcher_routes_enrolment_to_the_device_service() -> None:
    from fleet.routes import ROUTES, Target, resolve

    services = {"auth", "device", "telemetry", "commands", "gateway"}
    for path in (ENROL, TOKENS, f"{TOKENS}/abc", "/api/v1/devices/bulk"):
        assert resolve(path, ROUTES, services) == Target("device"), path
    assert resolve("/api/v1/agent/heartbeat", ROUTES, services) == Target("telemetry")


def test_audit_lines_of_enrolment_events_name_the_token_and_carry_no_hash() -> None:
    import json
    from pathlib import Path

    from libs.events.envelope import decode_envelope, decode_event
    from libs.events.schemas import REGISTRY
    from services.auth.domain import audit_entry

    golden = Path(__file__).parents[1] / "contract" / "golden"
    subjects = {}
    for tag in (
        "device.enrolment_token_created.v1",
        "device.enrolment_token_revoked.v1",
        "device.enrolment_token_used.v1",
        "device.credential_rotated.v1",
    ):
        event = decode_event(decode_envelope((golden / f"{tag}.json").read_bytes()), REGISTRY)
        entry = audit_entry(event)
        assert entry is not None
        assert "sha256" not in json.dumps(entry.details)
        subjects[tag] = entry.subject
    token = "3f1c2b9a-7d4e-4a1b-8c2d-9e0f1a2b3c4d"
    assert (
        subjects["device.enrolment_token_created.v1"]
        == subjects["device.enrolment_token_revoked.v1"]
        == token
    )
    assert subjects["device.enrolment_token_used.v1"] == "8c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"  # the device


async def test_an_agent_whose_device_was_deleted_enrols_as_new(world: World) -> None:
    ws = await world.workspace()
    made = await new_token(world, ws, max_uses=2)
    first = (await enrol(world, made["token"], "agent-x")).json()
    gone = await world.client.delete(f"/api/v1/devices/{first['device_id']}", headers=world.auth(ws))
    assert gone.status_code == 204
    again = await enrol(world, made["token"], "agent-x")
    assert again.status_code == 201 and again.json()["device_id"] != first["device_id"]  # ids never reused
    assert await knows(world, again.json()["device_id"], again.json()["device_secret"])
    [token] = (await world.client.get(TOKENS, headers=world.auth(ws))).json()
    assert token["uses"] == 2
    # and its next retry is the new device
    third = (await enrol(world, made["token"], "agent-x")).json()
    assert third["device_id"] == again.json()["device_id"]


async def test_a_retry_is_answered_only_shortly_after_the_first_enrolment(world: World) -> None:
    """A token and agent id (a stolen SD card) are not a standing key to the device's secret."""
    ws = await world.workspace()
    made = await new_token(world, ws, max_uses=5)
    first = (await enrol(world, made["token"], "late-retry")).json()
    assert (await enrol(world, made["token"], "late-retry")).status_code == 201  # within the window
    assert world.host.pool is not None
    await world.host.pool.execute(
        "UPDATE enrolment_agents SET first_enrolled_at = first_enrolled_at - interval '11 minutes' "
        "WHERE device_id = $1",
        first["device_id"],
    )
    late = await enrol(world, made["token"], "late-retry")
    assert late.status_code == 401 and late.json()["error"]["code"] == "INVALID_ENROLMENT_TOKEN"
    assert await world.count("SELECT count(*) FROM devices WHERE workspace_id = $1", ws) == 1


async def test_a_retry_cannot_undo_an_operators_revocation(world: World) -> None:
    from libs.events.publisher import Publisher
    from libs.events.schemas.auth import CredentialRevoked

    ws = await world.workspace()
    made = await new_token(world, ws, max_uses=5)
    first = (await enrol(world, made["token"], "revoked-one")).json()
    [registered] = [e for _env, e in await world.events() if isinstance(e, DeviceRegistered)]
    assert world.host.redis is not None
    auth = Publisher(world.host.redis, producer="auth")
    await auth.publish(
        world.prefix + "events:auth",
        CredentialRevoked(
            credential_id=registered.credentials[0].credential_id,
            device_id=first["device_id"],
            workspace_id=ws,
            kind="secret",
        ),
    )
    again = await enrol(world, made["token"], "revoked-one")
    assert again.status_code == 401 and again.json()["error"]["code"] == "INVALID_ENROLMENT_TOKEN"
    assert not await knows(world, first["device_id"], first["device_secret"])
