"""The runner against a tiny in-process fake server (HTTP through httpx.MockTransport, a real
websockets server for the agent socket): what the later e2e tests against the real services do not
pin down — the token stays out of the URL, frame order, redelivery dedup through the real loop,
the spool replay after an outage, bye on shutdown, exit 1 on bad credentials, the health endpoint.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from agent.commands import CommandContext, CommandOutcome
from agent.config import AgentConfig, Credentials
from agent.health import start_health_server
from agent.runner import AgentRunner, ws_url
from agent.spool import Spool

SECRET = "s" * 64
TOKEN = "fs1.test.session"
NOW = "2026-01-01T00:00:00Z"


class FakeSampler:
    def sample(self) -> dict[str, float]:
        return {"cpu": 1.5, "memory": 20.0}


@dataclass
class FakeRegistry:
    runs: list[str] = field(default_factory=list)

    def names(self) -> list[str]:
        return ["ping"]

    async def run(self, command_type: str, parameters: dict[str, Any], ctx: CommandContext) -> CommandOutcome:
        self.runs.append(command_type)
        await asyncio.sleep(0.05)  # long enough for a redelivery to arrive meanwhile
        return CommandOutcome("succeeded", result={"pong": True}, duration_ms=50.0)


@dataclass
class FakeServer:
    """HTTP routes of auth and telemetry; the socket is served by ``socket()``."""

    secret: str = SECRET
    up: bool = True
    auth_calls: int = 0
    heartbeats: list[dict[str, Any]] = field(default_factory=list)
    batches: list[list[dict[str, Any]]] = field(default_factory=list)
    frames: list[dict[str, Any]] = field(default_factory=list)
    clients: list[httpx.AsyncClient] = field(default_factory=list)
    handshakes: list[tuple[str, Headers]] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)

    def http(self, request: httpx.Request) -> httpx.Response:
        if not self.up:
            raise httpx.ConnectError("down", request=request)
        body = json.loads(request.content)
        if request.url.path == "/api/v1/device/auth":
            self.auth_calls += 1
            if body["deviceSecret"] != self.secret:
                return httpx.Response(401, json={"error": {"code": "INVALID_CREDENTIALS", "message": "no"}})
            return httpx.Response(
                200, json={"token": TOKEN, "expiresIn": 86400, "deviceId": body["deviceId"]}
            )
        assert request.headers["X-Device-Session"] == TOKEN
        if request.url.path == "/api/v1/agent/heartbeat":
            self.heartbeats.append(body)
            return httpx.Response(200, json={"acknowledged": True, "seq": body["seq"], "nextHeartbeat": 100})
        self.batches.append(body["heartbeats"])
        return httpx.Response(200, json={"acknowledged": len(body["heartbeats"])})

    def check(self, conn: ServerConnection, request: Request) -> Response | None:
        self.handshakes.append((request.path, request.headers))
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return conn.respond(403, "no")
        return None

    async def socket(self, ws: ServerConnection) -> None:
        async for raw in ws:
            frame = json.loads(raw)
            self.frames.append(frame)
            kind = frame["type"]
            if kind == "hello":
                await ws.send(
                    _frame("welcome", device_id="d1", connection_id="c1", heartbeat_interval_ms=100)
                )
                for cid in self.commands:  # delivered twice: a reconnect race as the agent sees it
                    for attempt in (1, 2):
                        await ws.send(_command(cid, attempt))
            elif kind == "heartbeat":
                await ws.send(_frame("heartbeat_ack", seq=frame["seq"]))
            elif kind == "result":
                await ws.send(_frame("result_ack", command_id=frame["command_id"]))
            elif kind == "bye":
                await ws.close()


def _frame(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, "server_time": NOW, **fields})


def _command(cid: str, attempt: int) -> str:
    times = {"created_at": NOW, "expires_at": NOW}
    return _frame("command", command_id=cid, command_type="ping", attempt=attempt, **times)


@pytest.fixture
async def server() -> Any:
    fake = FakeServer()
    async with serve(fake.socket, "127.0.0.1", 0, process_request=fake.check) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        fake.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
        yield fake
    for client in fake.clients:
        await client.aclose()


def make_runner(server: FakeServer, tmp_path: Path, **cfg: Any) -> tuple[AgentRunner, FakeRegistry]:
    config = AgentConfig(
        server_url=server.url,  # type: ignore[attr-defined]
        state_dir=tmp_path,
        heartbeat_interval_s=0.1,
        backoff_base_s=0.01,
        backoff_cap_s=0.05,
        **cfg,
    )
    http = httpx.AsyncClient(transport=httpx.MockTransport(server.http))
    server.clients.append(http)  # a shared client is not the runner's to close
    registry = FakeRegistry()
    runner = AgentRunner(
        config, Credentials("d1", SECRET), sampler=FakeSampler(), registry=registry, http=http
    )
    return runner, registry  # type: ignore[return-value]


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def test_the_socket_url_is_derived_from_the_server_url() -> None:
    assert ws_url("http://127.0.0.1:8080") == "ws://127.0.0.1:8080/api/v1/agent/ws"
    assert ws_url("https://fleet.example/base/") == "wss://fleet.example/base/api/v1/agent/ws"


async def test_socket_session_commands_once_and_bye(
    server: FakeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server.commands = ["cmd-1"]
    runner, registry = make_runner(server, tmp_path)
    task = asyncio.create_task(runner.run())
    await wait_for(lambda: sum(f["type"] == "heartbeat" for f in server.frames) >= 3)
    await wait_for(lambda: any(f["type"] == "result" for f in server.frames))
    runner.request_shutdown()
    assert await asyncio.wait_for(task, 5) == 0
    path, headers = server.handshakes[0]
    assert path == "/api/v1/agent/ws" and TOKEN not in path  # the token travels in a header only
    assert headers["Sec-WebSocket-Protocol"] == "fleet.agent.v1"
    kinds = [f["type"] for f in server.frames]
    assert kinds[0] == "hello" and kinds[-1] == "bye"
    assert kinds.count("ack") == 2 and kinds.count("result") == 1 and registry.runs == ["ping"]
    assert kinds.index("ack") < kinds.index("result")
    seqs = [f["seq"] for f in server.frames if f["type"] == "heartbeat"]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    spool = Spool.in_dir(tmp_path)
    assert list(spool.executed()) == ["cmd-1"] and spool.pending_results() == []
    ours = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("websockets.server"))
    assert "heartbeat" in ours and TOKEN not in ours and SECRET not in ours  # the fake server may log it


async def test_a_restarted_agent_answers_a_redelivered_command_without_running_it(
    server: FakeServer, tmp_path: Path
) -> None:
    from libs.events.schemas.agent import Result

    Spool.in_dir(tmp_path).record_result(Result(command_id="cmd-7", status="succeeded"), finished_at=1e9)
    server.commands = ["cmd-7"]
    runner, registry = make_runner(server, tmp_path)
    task = asyncio.create_task(runner.run())
    await wait_for(lambda: [f["type"] for f in server.frames].count("ack") == 2)
    runner.request_shutdown()
    assert await asyncio.wait_for(task, 5) == 0
    assert registry.runs == []
    assert [f["command_id"] for f in server.frames if f["type"] == "result"][:1] == ["cmd-7"]


class HangingRegistry(FakeRegistry):
    async def run(self, command_type: str, parameters: dict[str, Any], ctx: CommandContext) -> CommandOutcome:
        self.runs.append(command_type)
        await asyncio.Event().wait()  # still running when the agent is stopped
        raise AssertionError("unreachable")


async def test_a_command_cut_short_by_a_stop_is_reported_interrupted_and_never_run_again(
    server: FakeServer, tmp_path: Path
) -> None:
    server.commands = ["cmd-9"]
    runner, _ = make_runner(server, tmp_path)
    runner.registry = hanging = HangingRegistry()
    task = asyncio.create_task(runner.run())
    await wait_for(lambda: hanging.runs == ["ping"])
    runner.request_shutdown()
    assert await asyncio.wait_for(task, 5) == 0
    assert not [f for f in server.frames if f["type"] == "result"]  # it never finished

    again, registry = make_runner(server, tmp_path)  # the next run gets the command again
    task = asyncio.create_task(again.run())
    await wait_for(lambda: [f["type"] for f in server.frames].count("ack") == 4)
    await wait_for(lambda: any(f["type"] == "result" for f in server.frames))
    again.request_shutdown()
    assert await asyncio.wait_for(task, 5) == 0
    assert registry.runs == []
    results = [f for f in server.frames if f["type"] == "result"]
    assert {(f["command_id"], f["status"]) for f in results} == {("cmd-9", "failed")}
    assert results[0]["error"].startswith("interrupted: the agent stopped while this command ran")


async def test_heartbeats_spooled_in_an_outage_are_replayed_in_order(
    server: FakeServer, tmp_path: Path
) -> None:
    server.up = False
    runner, _ = make_runner(server, tmp_path, http_only=True, offline_sample_every=1)
    task = asyncio.create_task(runner.run())
    await wait_for(lambda: runner.protocol.spooled >= 3)
    server.up = True
    await wait_for(lambda: server.heartbeats and server.batches and runner.protocol.spooled == 0)
    runner.request_shutdown()
    assert await asyncio.wait_for(task, 5) == 0
    replayed = [hb["seq"] for batch in server.batches for hb in batch]
    assert replayed == sorted(replayed) and len(replayed) >= 3
    assert {hb["boot"] for batch in server.batches for hb in batch} == {runner.boot}
    assert server.heartbeats[-1]["status"] == "offline"  # the clean-shutdown heartbeat over HTTP


async def test_bad_credentials_exit_1_with_a_clear_message(server: FakeServer, tmp_path: Path) -> None:
    server.secret = "something else"
    runner, _ = make_runner(server, tmp_path)
    assert await asyncio.wait_for(runner.run(), 5) == 1
    assert "credentials rejected" in runner.exit_message and SECRET not in runner.exit_message
    assert server.auth_calls == 2  # re-tried once, then no storm


async def test_the_health_endpoint_reports_the_runner(server: FakeServer, tmp_path: Path) -> None:
    runner, _ = make_runner(server, tmp_path)
    health = await start_health_server(0, runner.health)
    assert health is None  # port 0: off
    srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    srv.close()
    health = await start_health_server(port, runner.health)
    assert health is not None
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        before = await client.get("/health")
        task = asyncio.create_task(runner.run())
        await wait_for(lambda: runner.protocol.heartbeat_count >= 1)
        after = await client.get("/health")
        assert (await client.get("/other")).status_code == 404
    runner.request_shutdown()
    await asyncio.wait_for(task, 5)
    health.close()
    assert before.status_code == 503 and before.json()["status"] == "unhealthy"
    doc = after.json()
    assert after.status_code == 200 and doc["websocket"] == "connected" and doc["heartbeatCount"] >= 1
    assert set(doc) == {
        *("status", "uptime", "heartbeatCount", "heartbeatErrors", "websocket", "lastHeartbeat", "spooled")
    }
    assert msgspec.json.decode(after.content)["lastHeartbeat"].endswith("Z")


async def test_update_config_is_applied_at_once_and_kept(server: FakeServer, tmp_path: Path) -> None:
    runner, _ = make_runner(server, tmp_path)
    applied = runner.apply_config({"heartbeat_interval_s": 0.05, "metrics": ["cpu"]})
    assert applied == {"heartbeat_interval_s": 0.05, "metrics": ["cpu"]}
    assert runner.protocol.interval_s == 0.05 and runner._sample() == {"cpu": 1.5}
    assert json.loads((tmp_path / "config.json").read_text())["metrics"] == ["cpu"]
