"""Command delivery in every device dialect through one real ``fleet up`` (black box, PROTOCOLS.md).

For dialect S (its WebSocket, and heartbeat answers; results over HTTP), dialect K (polling), dialect W
(the path-token WebSocket) and the platform's agent protocol (``fleet.agent.v1``):

1. a command queued while the device is offline is delivered when it connects (or polls), and its
   result is recorded and shown in the history;
2. a command past its TTL is never delivered, and is ``expired``;
3. a cancelled command is never delivered;
4. a reconnect (or a repeated poll) in the middle of a command delivers it again but records one result.

Negative checks use a *marker*: a command queued after the one that must not arrive. Open commands are
handed out oldest first, so once the marker has arrived, the older command would have arrived before it.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis
import websockets

from .conftest import REDIS_URL, FleetProcess, clean_env, free_port

pytestmark = pytest.mark.slow

RESULT = {"exitCode": 0, "stdout": "pong", "stderr": ""}
LATE = {"exitCode": 1, "stdout": "", "stderr": "late duplicate"}
DEADLINE_S = 30.0  # generous: a CI run and a benchmark share this 2-core machine


@dataclass
class Stack:
    """The running ``fleet up``: its URLs, the demo workspace and the demo operator's headers."""

    url: str
    ws_url: str
    demo: dict[str, Any]
    auth: dict[str, str]

    @property
    def w(self) -> dict[str, str]:
        """Operator headers for dialect W's routes."""
        return {**self.auth, "X-Workspace-ID": self.demo["workspace_id"]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, module_database_url: str, run_id: str) -> Iterator[Stack]:
    """One ``fleet up`` for the module, on a free port, with a Redis prefix of its own."""
    prefix = f"t{run_id}-{uuid.uuid4().hex[:6]}:"
    cwd = tmp_path_factory.mktemp("fleet-dialects")
    env = clean_env(REDIS_URL=REDIS_URL, DATABASE_URL=module_database_url, STREAM_PREFIX=prefix)
    proc = FleetProcess(["up", "--port", str(free_port())], cwd, env)
    try:
        proc.wait_for(r"fleet is up")
        demo = json.loads((cwd / ".fleet" / "demo.json").read_text())
        url = demo["url"].rstrip("/")
        login = httpx.post(
            f"{url}/api/v1/auth/login",
            json={"email": demo["owner_email"], "password": demo["owner_password"]},
            timeout=30,
        )
        assert login.status_code == 200, login.text
        auth = {"Authorization": f"Bearer {login.json()['access_token']}"}
        yield Stack(url=url, ws_url="ws" + url.removeprefix("http"), demo=demo, auth=auth)
        assert proc.stop() == 0, proc.report()
    finally:
        proc.kill_everything()
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:
        yield client


async def eventually(check: Any, what: str, timeout: float = DEADLINE_S, every: float = 0.2) -> Any:
    """Call the async ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = await check()
        if last:
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(every)


# --- the devices, one class per dialect, written from PROTOCOLS.md only -------------------------


class Session:
    """One connection (or, for the polling dialects, one stretch of polling) of a device."""

    async def take(self, timeout: float) -> list[dict[str, Any]]:
        """Commands that arrived within about ``timeout`` seconds: ``{id, type, parameters, ...}``."""
        raise NotImplementedError

    async def answer(self, cid: str, ok: bool, result: dict[str, Any]) -> dict[str, Any]:
        """Report a result; returns what the platform answered (``{}`` where a dialect answers nothing)."""
        raise NotImplementedError


class SocketSession(Session):
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []  # read while waiting for something else

    async def frame(self, timeout: float) -> dict[str, Any] | None:
        if self.frames:
            return self.frames.pop(0)
        try:
            return json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        except TimeoutError:
            return None

    def command(self, frame: dict[str, Any]) -> dict[str, Any] | None:
        raise NotImplementedError

    async def take(self, timeout: float) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            frame = await self.frame(left)
            if frame is None:
                break
            if (cmd := self.command(frame)) is not None:
                got.append(cmd)
        return got


class Device:
    """A device of some dialect: created by the operator, queued for, connected, answered."""

    name = ""
    kind = "secret"

    def __init__(self, stack: Stack, http: httpx.AsyncClient) -> None:
        self.stack = stack
        self.http = http
        self.device_id = ""
        self.credential = ""

    async def create(self) -> Device:
        made = await self.http.post(
            "/api/v1/devices",
            json={"name": f"{self.name}-{uuid.uuid4().hex[:6]}", "device_type": "esp32"},
            headers=self.stack.auth,
        )
        assert made.status_code == 201, made.text
        self.device_id = made.json()["device_id"]
        minted = await self.http.post(
            f"/api/v1/devices/{self.device_id}/credentials", json={"kind": self.kind}, headers=self.stack.auth
        )
        assert minted.status_code == 201, minted.text
        assert minted.json()["kind"] == self.kind and minted.json()["device_id"] == self.device_id
        self.credential = minted.json()["secret"]
        return self

    async def session_token(self) -> str:
        """Dialect S authentication (also the agent's): a device session token."""
        got = await self.http.post(
            "/api/v1/device/auth", json={"deviceId": self.device_id, "deviceSecret": self.credential}
        )
        assert got.status_code == 200, got.text
        assert got.json()["deviceId"] == self.device_id
        return str(got.json()["token"])

    async def queue(self, command_type: str, parameters: dict[str, Any] | None = None, **extra: Any) -> str:
        """Queue a command with the operator API; returns its id."""
        body: dict[str, Any] = {"command_type": command_type, "payload": parameters or {}, **extra}
        made = await self.http.post(
            f"/api/v1/devices/{self.device_id}/commands", json=body, headers=self.stack.auth
        )
        assert made.status_code == 201, made.text
        assert made.json()["status"] == "pending"
        return str(made.json()["command_id"])

    async def command(self, cid: str) -> dict[str, Any]:
        """The operator's view of one command."""
        got = await self.http.get(f"/api/v1/commands/{cid}", headers=self.stack.auth)
        assert got.status_code == 200, got.text
        return dict(got.json())

    async def settled(self, cid: str, status: str) -> dict[str, Any]:
        """Wait until the command has ``status``; fails if it settles on another final status."""

        async def check() -> dict[str, Any] | None:
            got = await self.command(cid)
            if got["status"] not in ("pending", "sent", status):
                pytest.fail(f"command {cid} is {got['status']}, expected {status}: {got}")
            return got if got["status"] == status else None

        return dict(await eventually(check, f"command {cid} to be {status}"))

    async def history(self) -> dict[str, tuple[str, Any]]:
        """The device's command history: id -> (status, result)."""
        got = await self.http.get(
            f"/api/v1/devices/{self.device_id}/commands?limit=50", headers=self.stack.auth
        )
        assert got.status_code == 200, got.text
        ids = [h["command_id"] for h in got.json()]
        assert len(ids) == len(set(ids)), f"a command twice in the history: {got.json()}"
        return {h["command_id"]: (h["status"], h["result"]) for h in got.json()}

    def session(self) -> Any:
        """An async context manager giving a ``Session``."""
        raise NotImplementedError


class SHttpAnswers:
    """Dialect S results: ``POST /api/v1/device/commands/{id}/result``."""

    http: httpx.AsyncClient
    token: str

    async def answer(self, cid: str, ok: bool, result: dict[str, Any]) -> dict[str, Any]:
        body = {
            "status": "success" if ok else "failure",
            "executedAt": "2026-01-01T00:00:00Z",
            "duration": 12,
            "output": result["stdout"],
            "result": result,
        }
        if not ok:
            body["error"] = result["stderr"]
        got = await self.http.post(
            f"/api/v1/device/commands/{cid}/result", json=body, headers={"X-Device-Session": self.token}
        )
        assert got.status_code == 200, got.text
        assert got.json()["success"] is True and got.json()["commandId"] == cid
        return dict(got.json())


class SWsSession(SHttpAnswers, SocketSession):
    def command(self, frame: dict[str, Any]) -> dict[str, Any] | None:
        if frame.get("type") != "command":
            return None
        payload = frame["payload"]
        assert frame["id"] == payload["id"] and frame["command"] == payload["type"], frame
        return {"id": payload["id"], "type": payload["type"], "parameters": payload["parameters"]}


class SWs(Device):
    name = "s-ws"

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Session]:
        token = await self.session_token()
        url = f"{self.stack.ws_url}/api/v1/device/ws"
        async with websockets.connect(url, additional_headers={"X-Device-Session": token}) as ws:
            s = SWsSession(ws)
            s.http, s.token = self.http, token
            first = await s.frame(DEADLINE_S)
            assert first is not None and first["type"] == "connected", first
            assert first["deviceId"] == self.device_id
            # what deployed clients send, to be ignored
            await ws.send(json.dumps({"type": "connected", "payload": {"version": "1.0"}}))
            yield s


class SHeartbeatSession(SHttpAnswers, Session):
    async def take(self, timeout: float) -> list[dict[str, Any]]:
        got = await self.http.post(
            "/api/v1/device/heartbeat",
            json={"status": "healthy", "metrics": {"cpu": 5, "memory": 10, "uptime": 60}},
            headers={"X-Device-Session": self.token},
        )
        assert got.status_code == 200, got.text
        assert got.json()["success"] is True and got.json()["acknowledged"] is True
        commands = []
        for c in got.json().get("commands", []):
            payload = c.get("payload", c)  # the WebSocket frame, or only its payload
            commands.append(
                {"id": payload["id"], "type": payload["type"], "parameters": payload["parameters"]}
            )
        await asyncio.sleep(min(timeout, 0.3))
        return commands


class SHeartbeat(Device):
    name = "s-hb"

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Session]:
        s = SHeartbeatSession()
        s.http, s.token = self.http, await self.session_token()
        yield s


class KSession(Session):
    def __init__(self, http: httpx.AsyncClient, headers: dict[str, str]) -> None:
        self.http = http
        self.headers = headers

    async def take(self, timeout: float) -> list[dict[str, Any]]:
        got = await self.http.get("/api/v1/devices/pending", headers=self.headers)
        assert got.status_code == 200, got.text
        assert {p["status"] for p in got.json()} <= {"pending"}, got.json()
        await asyncio.sleep(min(timeout, 0.3))
        return [
            {"id": p["command_id"], "type": p["command_type"], "parameters": p["payload"]} for p in got.json()
        ]

    async def answer(self, cid: str, ok: bool, result: dict[str, Any]) -> dict[str, Any]:
        body = {"status": "completed" if ok else "failed", "result": result}
        got = await self.http.put(f"/api/v1/devices/{cid}/status", json=body, headers=self.headers)
        assert got.status_code == 200, got.text
        assert got.json()["command_id"] == cid
        return dict(got.json())


class K(Device):
    name = "k"
    kind = "api_key"

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Session]:
        yield KSession(self.http, {"X-Device-ID": self.device_id, "X-API-Key": self.credential})


class WSession(SocketSession):
    def command(self, frame: dict[str, Any]) -> dict[str, Any] | None:
        if "command_id" not in frame:
            return None
        assert "type" not in frame, frame
        return {"id": frame["command_id"], "type": frame["command_type"], "parameters": frame["parameters"]}

    async def answer(self, cid: str, ok: bool, result: dict[str, Any]) -> dict[str, Any]:
        error = None if ok else result["stderr"]
        body = {
            "command_id": cid,
            "status": "completed" if ok else "failed",
            "result": result,
            "error": error,
        }
        await self.ws.send(json.dumps(body))
        return {}


class W(Device):
    name = "w"
    kind = "token"

    async def queue(self, command_type: str, parameters: dict[str, Any] | None = None, **extra: Any) -> str:
        if extra:  # a TTL: W's own route takes none, the operator route does (one device, one queue)
            return await super().queue(command_type, parameters, **extra)
        made = await self.http.post(
            f"/api/devices/{self.device_id}/command",
            json={"command_type": command_type, "parameters": parameters or {}},
            headers=self.stack.w,
        )
        assert made.status_code == 201, made.text
        assert made.json()["status"] == "pending" and made.json()["device_id"] == self.device_id
        return str(made.json()["id"])

    async def history(self) -> dict[str, tuple[str, Any]]:
        got = await self.http.get(f"/api/devices/{self.device_id}/commands?limit=50", headers=self.stack.w)
        assert got.status_code == 200, got.text
        ids = [h["id"] for h in got.json()]
        assert len(ids) == len(set(ids)), f"a command twice in the history: {got.json()}"
        return {h["id"]: (h["status"], h["result"]) for h in got.json()}

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Session]:
        async with websockets.connect(f"{self.stack.ws_url}/ws/device/{self.credential}") as ws:
            s = WSession(ws)
            await ws.send(json.dumps({"type": "ping"}))  # a heartbeat, answered after any commands
            kept = []
            while (frame := await s.frame(DEADLINE_S)) != {"type": "pong"}:
                assert frame is not None, "no pong"
                kept.append(frame)
            s.frames[:0] = kept
            yield s


class AgentSession(SocketSession):
    def command(self, frame: dict[str, Any]) -> dict[str, Any] | None:
        if frame.get("type") != "command":
            assert frame.get("type") != "error", frame
            return None
        return {
            "id": frame["command_id"],
            "type": frame["command_type"],
            "parameters": frame["parameters"],
            "attempt": frame["attempt"],
        }

    async def take(self, timeout: float) -> list[dict[str, Any]]:
        got = await super().take(timeout)
        for cmd in got:  # an agent acknowledges every command that arrives, again on a resend
            await self.ws.send(json.dumps({"type": "ack", "command_id": cmd["id"]}))
        return got

    async def answer(self, cid: str, ok: bool, result: dict[str, Any]) -> dict[str, Any]:
        body = {
            "type": "result",
            "command_id": cid,
            "status": "succeeded" if ok else "failed",
            "result": result,
            "error": None if ok else result["stderr"],
            "executed_at": "2026-01-01T00:00:00Z",
            "duration_ms": 12.5,
        }
        await self.ws.send(json.dumps(body))
        deadline = time.monotonic() + DEADLINE_S
        kept: list[dict[str, Any]] = []
        try:
            while time.monotonic() < deadline:
                frame = await self.frame(deadline - time.monotonic())
                if frame is None:
                    break
                if frame.get("type") == "result_ack" and frame["command_id"] == cid:
                    return frame
                assert frame.get("type") != "error", frame
                kept.append(frame)
        finally:
            self.frames[:0] = kept
        pytest.fail(f"no result_ack for {cid}")


class Agent(Device):
    name = "agent"

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Session]:
        token = await self.session_token()
        url = f"{self.stack.ws_url}/api/v1/agent/ws"
        async with websockets.connect(url, subprotocols=["fleet.agent.v1", f"auth.{token}"]) as ws:
            assert ws.subprotocol == "fleet.agent.v1"
            s = AgentSession(ws)
            await ws.send(json.dumps({"type": "hello", "boot": uuid.uuid4().hex, "agent_version": "test"}))
            welcome = await s.frame(DEADLINE_S)
            assert welcome is not None and welcome["type"] == "welcome", welcome
            assert welcome["device_id"] == self.device_id
            yield s


DIALECTS = {"s_ws": SWs, "s_heartbeat": SHeartbeat, "k": K, "w": W, "agent": Agent}


async def receive_until(session: Session, cid: str) -> list[dict[str, Any]]:
    """Every command the session receives until ``cid`` arrives (fails after the deadline)."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + DEADLINE_S
    while not any(c["id"] == cid for c in got):
        if time.monotonic() > deadline:
            pytest.fail(f"command {cid} did not arrive within {DEADLINE_S}s; got {got}")
        got += await session.take(0.5)
    return got


def ids(commands: list[dict[str, Any]]) -> list[str]:
    return [c["id"] for c in commands]


@pytest.fixture(params=list(DIALECTS))
async def device(request: pytest.FixtureRequest, stack: Stack, http: httpx.AsyncClient) -> Device:
    return await DIALECTS[request.param](stack, http).create()


# --- 1. queued while offline, delivered on connect, result recorded --------------------------------


async def test_a_command_queued_offline_is_delivered_on_connect_and_its_result_recorded(device: Device):
    cid = await device.queue("ping", {"n": 1})
    await asyncio.sleep(0.5)  # the device is offline meanwhile: nothing can take the command
    assert (await device.command(cid))["status"] == "pending"
    async with device.session() as s:
        got = await receive_until(s, cid)
        (cmd,) = [c for c in got if c["id"] == cid]
        assert (cmd["type"], cmd["parameters"]) == ("ping", {"n": 1})
        if isinstance(device, Agent):
            assert cmd["attempt"] == 1
        answered = await s.answer(cid, True, RESULT)
        if isinstance(device, Agent):
            assert answered["duplicate"] is False
        if isinstance(device, (SWs, SHeartbeat)):
            assert (answered["status"], answered["duplicate"]) == ("completed", False)
        if isinstance(device, K):
            assert answered["status"] == "completed"
        done = await device.settled(cid, "completed")
    assert done["result"] == RESULT and done["state"] == "succeeded"
    assert done["finished_at"]
    if isinstance(device, (Agent, W, K)):  # S: the send event may be folded in after the HTTP result
        assert done["sent_at"]
    assert (await device.history())[cid] == ("completed", RESULT)


# --- 2. an expired command is never delivered -----------------------------------------------------


async def test_an_expired_command_is_never_delivered(device: Device):
    started = time.monotonic()
    cid = await device.queue("ping", ttl_s=1)
    await asyncio.sleep(max(0.0, started + 1.5 - time.monotonic()))  # past its TTL, the sweeper or not
    marker = await device.queue("marker")
    async with device.session() as s:
        got = await receive_until(s, marker)
        got += await s.take(1.0)
    assert cid not in ids(got), got
    expired = await device.settled(cid, "expired")
    assert (expired["state"], expired["result"], expired["sent_at"]) == ("expired", None, None)
    assert (await device.history())[cid] == ("expired", None)


# --- 3. a cancelled command is never delivered ----------------------------------------------------


async def test_a_cancelled_command_is_never_delivered(device: Device):
    cid = await device.queue("restart")
    cancelled = await device.http.post(f"/api/v1/commands/{cid}/cancel", headers=device.stack.auth)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text
    marker = await device.queue("marker")
    await asyncio.sleep(1.0)  # the device connects a moment later (the cancel is long known by then)
    async with device.session() as s:
        got = await receive_until(s, marker)
        got += await s.take(1.0)
    assert cid not in ids(got), got
    assert (await device.command(cid))["status"] == "cancelled"
    assert (await device.history())[cid] == ("cancelled", None)


# --- 4. a reconnect in the middle of a command records one result ---------------------------------


async def test_agent_reconnect_mid_command_records_one_result(stack: Stack, http: httpx.AsyncClient):
    agent = await Agent(stack, http).create()
    cid = await agent.queue("ping")
    async with agent.session() as first:
        (cmd,) = [c for c in await receive_until(first, cid) if c["id"] == cid]
        assert cmd["attempt"] == 1
    # the socket died before the result: the command comes again, as attempt 2
    async with agent.session() as second:
        (cmd,) = [c for c in await receive_until(second, cid) if c["id"] == cid]
        assert cmd["attempt"] == 2
        assert (await second.answer(cid, True, RESULT))["duplicate"] is False
        assert (await second.answer(cid, False, LATE))["duplicate"] is True
    async with agent.session() as third:  # a late repeat on yet another connection
        assert cid not in ids(await third.take(1.0))
        assert (await third.answer(cid, False, LATE))["duplicate"] is True
    done = await agent.settled(cid, "completed")
    assert (done["result"], done["reported_status"], done["error"]) == (RESULT, "succeeded", None)
    assert done["attempts"] == 2
    assert (await agent.history())[cid] == ("completed", RESULT)


async def test_w_reconnect_mid_command_records_one_result(stack: Stack, http: httpx.AsyncClient):
    w = await W(stack, http).create()
    cid = await w.queue("led", {"on": 1})
    async with w.session() as first:
        assert cid in ids(await receive_until(first, cid))
    async with w.session() as second:  # the command is sent again, and answered twice
        (cmd,) = [c for c in await receive_until(second, cid) if c["id"] == cid]
        assert cmd["parameters"] == {"on": 1}
        await second.answer(cid, True, RESULT)
        await second.answer(cid, False, LATE)
    await w.settled(cid, "completed")
    marker = await w.queue("marker")
    async with w.session() as third:  # a late repeat on yet another connection, then the marker's result
        got = await receive_until(third, marker)
        assert cid not in ids(got), got
        await third.answer(cid, False, LATE)
        await third.answer(marker, True, RESULT)
        await w.settled(marker, "completed")  # results are taken in order: the repeats came before it
    done = await w.command(cid)
    assert (done["status"], done["result"], done["error"], done["reported_status"]) == (
        "completed",
        RESULT,
        None,
        "completed",
    )
    one = await http.get(f"/api/devices/{w.device_id}/commands/{cid}", headers=stack.w)
    assert one.status_code == 200, one.text
    assert (one.json()["status"], one.json()["result"], one.json()["error_message"]) == (
        "completed",
        RESULT,
        None,
    )
    assert (await w.history())[cid] == ("completed", RESULT)


async def test_s_ws_reconnect_mid_command_records_one_result(stack: Stack, http: httpx.AsyncClient):
    s = await SWs(stack, http).create()
    cid = await s.queue("ping")
    async with s.session() as first:
        assert cid in ids(await receive_until(first, cid))
    async with s.session() as second:
        assert cid in ids(await receive_until(second, cid))
        first_answer = await second.answer(cid, True, RESULT)
        assert (first_answer["status"], first_answer["duplicate"]) == ("completed", False)
        again = await second.answer(cid, False, LATE)
        assert (again["status"], again["duplicate"]) == ("completed", True)
    done = await s.command(cid)
    assert (done["status"], done["result"], done["error"], done["reported_status"]) == (
        "completed",
        RESULT,
        None,
        "success",
    )
    assert (await s.history())[cid] == ("completed", RESULT)


async def test_s_heartbeat_hands_a_command_out_once_and_records_one_result(
    stack: Stack, http: httpx.AsyncClient
):
    s = await SHeartbeat(stack, http).create()
    cid = await s.queue("ping")
    async with s.session() as session:
        assert cid in ids(await receive_until(session, cid))
        assert cid not in ids(await session.take(0.5) + await session.take(0.5))
        assert (await session.answer(cid, True, RESULT))["duplicate"] is False
        again = await session.answer(cid, False, LATE)
        assert (again["status"], again["duplicate"]) == ("completed", True)
    done = await s.command(cid)
    assert (done["status"], done["result"], done["error"]) == ("completed", RESULT, None)
    assert (await s.history())[cid] == ("completed", RESULT)


async def test_k_repolling_mid_command_records_one_result(stack: Stack, http: httpx.AsyncClient):
    k = await K(stack, http).create()
    cid = await k.queue("ping")
    async with k.session() as session:
        assert cid in ids(await receive_until(session, cid))
        assert cid in ids(await session.take(0.1))  # listed again until its status changes
        assert (await session.answer(cid, True, RESULT))["status"] == "completed"
        again = await session.answer(cid, False, LATE)
        assert (again["status"], again["result"]) == ("completed", RESULT)  # the recorded state
        assert cid not in ids(await session.take(0.1))
    done = await k.command(cid)
    assert (done["status"], done["result"], done["error"]) == ("completed", RESULT, None)
    assert (await k.history())[cid] == ("completed", RESULT)


async def test_agent_answers_on_two_connections_record_one_result(stack: Stack, http: httpx.AsyncClient):
    """A new socket while the old one is not yet known dead: both get the command, both answer."""
    agent = await Agent(stack, http).create()
    cid = await agent.queue("ping")
    async with agent.session() as old, agent.session() as new:
        assert [c["attempt"] for c in await receive_until(old, cid) if c["id"] == cid] == [1]
        assert [c["attempt"] for c in await receive_until(new, cid) if c["id"] == cid] == [2]
        assert (await old.answer(cid, True, RESULT))["duplicate"] is False
        assert (await new.answer(cid, False, LATE))["duplicate"] is True
    done = await agent.settled(cid, "completed")
    assert (done["result"], done["reported_status"], done["error"], done["attempts"]) == (
        RESULT,
        "succeeded",
        None,
        2,
    )
    assert (await agent.history())[cid] == ("completed", RESULT)


async def test_w_answers_on_two_connections_record_one_result(stack: Stack, http: httpx.AsyncClient):
    """A new socket while the old one is not yet known dead: both get the command, both answer."""
    w = await W(stack, http).create()
    cid = await w.queue("led", {"on": 0})
    async with w.session() as old, w.session() as new:
        assert cid in ids(await receive_until(old, cid))
        assert cid in ids(await receive_until(new, cid))
        await old.answer(cid, True, RESULT)
        await w.settled(cid, "completed")
        marker = await w.queue("marker")
        assert marker in ids(await receive_until(new, marker))
        await new.answer(cid, False, LATE)
        await new.answer(marker, True, RESULT)
        await w.settled(marker, "completed")  # the repeat on this socket was taken before the marker
    done = await w.command(cid)
    assert (done["status"], done["result"], done["error"], done["attempts"]) == ("completed", RESULT, None, 2)
    assert (await w.history())[cid] == ("completed", RESULT)
