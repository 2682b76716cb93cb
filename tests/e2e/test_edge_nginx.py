"""The edge proxy for real: Debian's nginx with infra/nginx/fleet.conf in front of the services.

Every service runs as its own processes (``python -m services.<name> api`` and ``worker``) on free
loopback ports with a stream prefix of this module's own, connected as its own role to a private
Postgres that infra/postgres/init.sql prepared exactly as compose's is prepared; nginx runs in the foreground
with a private prefix on a free port, with the routing file unchanged (only its ``listen`` port) and an
upstreams file naming those ports. Every dialect is then driven through the edge alone: the portal
page, operator login and APIs, dialect S (auth, heartbeat, its WebSocket, a command result), dialect K
(register, metrics, pending, status), dialect W (register, the path-token WebSocket), the agent
WebSocket and enrolment, and the portal socket. The access log must name every route and never the W
token or a query string.

nginx is installed with apt-get when missing (the test is skipped, saying why, only where apt-get or
root is unavailable).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import pytest
import redis
import websockets
import yaml

from fleet.routes import ROUTES, resolve

from ..conftest import REDIS_URL, free_port

# room for apt-get to install nginx on the first run, then about half a minute
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "infra" / "nginx" / "fleet.conf"
KEY = "edge-e2e-signing-key-" + "k" * 32
SERVICES = ("auth", "device", "telemetry", "commands", "gateway")
DEADLINE_S = 30.0  # one step through the event flow, on a loaded 2-core machine


def nginx_binary() -> str:
    """Debian's nginx, installed with apt-get when missing."""
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if found:
        return found
    if shutil.which("apt-get") is None:
        pytest.skip("nginx is not installed and apt-get is not available to install it")
    if os.geteuid() != 0:
        pytest.skip("nginx is not installed and installing it with apt-get needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "nginx"]):
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    found = shutil.which("nginx") or "/usr/sbin/nginx"
    assert os.access(found, os.X_OK), "apt-get installed nginx but there is no nginx binary"
    return found


def nginx_config(prefix: Path, port: int, ports: dict[str, int]) -> Path:
    """A main config with the routing file as it is (listening on ``port``) and local upstreams."""
    conf = prefix / "conf"
    (conf / "fleet").mkdir(parents=True)
    for temp in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / temp).mkdir()
    routing = CONF.read_text()
    assert routing.count("listen 8080;") == 1
    (conf / "fleet.conf").write_text(routing.replace("listen 8080;", f"listen 127.0.0.1:{port};"))
    (conf / "fleet" / "upstreams.conf").write_text(
        "".join(
            f"upstream fleet_{name} {{ server 127.0.0.1:{p}; keepalive 8; }}\n" for name, p in ports.items()
        )
    )
    main = conf / "nginx.conf"
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers may read the private temp dirs
    main.write_text(
        f"{user}daemon off;\nworker_processes 1;\npid {prefix}/nginx.pid;\n"
        f"error_log {prefix}/error.log info;\n"
        "events { worker_connections 512; }\n"
        "http {\n"
        f"  client_body_temp_path {prefix}/body;\n  proxy_temp_path {prefix}/proxy;\n"
        f"  fastcgi_temp_path {prefix}/fastcgi;\n  uwsgi_temp_path {prefix}/uwsgi;\n"
        f"  scgi_temp_path {prefix}/scgi;\n"
        "  include fleet.conf;\n"
        "}\n"
    )
    return main


@contextlib.contextmanager
def compose_postgres(pgdata: Path) -> Iterator[dict[str, str]]:
    """A private Postgres (the pgserver package, as ``fleet up`` uses) with database ``fleet``
    prepared by infra/postgres/init.sql; yields each service's URL, as its own role."""
    from pgserver.postgres_server import POSTGRES_BIN_PATH, get_server

    server = get_server(pgdata, cleanup_mode="delete")
    try:
        server.psql("CREATE DATABASE fleet;")
        socket_dir = parse_qs(urlsplit(server.get_uri("fleet")).query)["host"][0]
        passwords = {name: uuid.uuid4().hex for name in SERVICES}
        init = subprocess.run(
            [str(POSTGRES_BIN_PATH / "psql"), server.get_uri("fleet"), "-v", "ON_ERROR_STOP=1"]
            + [arg for name, pw in passwords.items() for arg in ("-v", f"pw_{name}={pw}")]
            + ["-f", str(ROOT / "infra" / "postgres" / "init.sql")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert init.returncode == 0, init.stderr
        yield {name: f"postgresql://{name}:{pw}@/fleet?host={socket_dir}" for name, pw in passwords.items()}
    finally:
        server.cleanup()


def poll(url: str, deadline: float, what: str) -> None:
    """GET ``url`` until it answers 200."""
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not ready in time ({url})")
        time.sleep(0.1)


@dataclass
class Edge:
    """The running stack: the edge's URLs, its logs, and an operator of a fresh workspace."""

    url: str
    ws_url: str
    access_log: Path
    error_logs: list[Path]
    operator: dict[str, str]
    workspace_id: str
    email: str
    password: str
    ports: dict[str, int]
    database_urls: dict[str, str]


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, run_id: str) -> Iterator[Edge]:
    """The services as processes, nginx in front of them, and an operator bootstrapped through it."""
    nginx = nginx_binary()
    tmp = tmp_path_factory.mktemp("edge")
    prefix = f"t{run_id}-{uuid.uuid4().hex[:6]}:"
    ports = {name: free_port() for name in SERVICES}
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    with compose_postgres(tmp / "pg") as database_urls:
        env = {
            **{k: v for k, v in os.environ.items() if not k.endswith(("DATABASE_URL", "REDIS_URL"))},
            "REDIS_URL": REDIS_URL,
            **{f"{name.upper()}_DATABASE_URL": url for name, url in database_urls.items()},
            "STREAM_PREFIX": prefix,
            "SIGNING_KEY": KEY,
            "PYTHONPATH": str(ROOT),
            # cheap password hashes: this tests routing, not argon2
            "AUTH_ARGON2_TIME_COST": "1",
            "AUTH_ARGON2_MEMORY_KIB": "8192",
            "AUTH_ARGON2_PARALLELISM": "1",
            **{f"{name.upper()}_PORT": str(port) for name, port in ports.items()},
        }
        try:
            for name in SERVICES:
                for role in ("api", "worker"):
                    log = tmp / f"{name}-{role}.log"
                    logs.append(log)
                    with log.open("wb") as err:
                        procs.append(
                            subprocess.Popen(
                                [sys.executable, "-m", f"services.{name}", role],
                                env=env,
                                cwd=ROOT,
                                stdout=subprocess.DEVNULL,
                                stderr=err,
                            )
                        )
            deadline = time.monotonic() + 120
            for name, port in ports.items():
                poll(f"http://127.0.0.1:{port}/readyz", deadline, name)

            port = free_port()
            main = nginx_config(tmp / "nginx", port, ports)
            check = subprocess.run(
                [nginx, "-t", "-p", str(tmp / "nginx"), "-c", str(main)], capture_output=True
            )
            assert check.returncode == 0, check.stderr.decode(errors="replace")
            access_log, nginx_err = tmp / "access.log", tmp / "nginx.stderr"
            with access_log.open("wb") as out, nginx_err.open("wb") as err:
                procs.append(
                    subprocess.Popen(
                        [nginx, "-p", str(tmp / "nginx"), "-c", str(main)], stdout=out, stderr=err
                    )
                )
            url = f"http://127.0.0.1:{port}"
            poll(f"{url}/healthz", time.monotonic() + 30, "nginx")

            email, password = f"edge-{uuid.uuid4().hex[:6]}@fleet.test", uuid.uuid4().hex
            made = httpx.post(
                f"{url}/api/v1/auth/bootstrap",
                json={"email": email, "password": password, "workspace_name": "Edge", "open_enrolment": True},
                timeout=30,
            )
            assert made.status_code == 201, made.text
            login = httpx.post(
                f"{url}/api/v1/auth/login", json={"email": email, "password": password}, timeout=30
            )
            assert login.status_code == 200, login.text
            yield Edge(
                url=url,
                ws_url=f"ws://127.0.0.1:{port}",
                access_log=access_log,
                error_logs=[nginx_err, tmp / "nginx" / "error.log"],
                operator={"Authorization": f"Bearer {login.json()['access_token']}"},
                workspace_id=login.json()["workspace_id"],
                email=email,
                password=password,
                ports=ports,
                database_urls=database_urls,
            )
        finally:
            stop_all(procs)
            client = redis.Redis.from_url(REDIS_URL)
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                client.delete(*keys)
            client.close()
    for log in logs:
        text = log.read_text(errors="replace")
        assert "Traceback" not in text, f"{log.name}:\n{text[-3000:]}"


async def eventually(check: Any, what: str, timeout: float = DEADLINE_S) -> Any:
    """Await ``check()`` until it returns something truthy (events take a moment between services)."""
    deadline = time.monotonic() + timeout
    while True:
        if got := await check():
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.2)


async def recv_json(ws: Any, timeout: float = DEADLINE_S) -> dict[str, Any]:
    return dict(json.loads(await asyncio.wait_for(ws.recv(), timeout)))


async def recv_until(ws: Any, pred: Any, timeout: float = DEADLINE_S) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        frame = await recv_json(ws, max(deadline - time.monotonic(), 0.01))
        if pred(frame):
            return frame


async def new_device(http: httpx.AsyncClient, edge: Edge, kind: str) -> tuple[str, str]:
    """An operator-created device with one credential of ``kind``: (device id, credential)."""
    made = await http.post(
        "/api/v1/devices",
        json={"name": f"edge-{kind}-{uuid.uuid4().hex[:6]}", "device_type": "virtual"},
        headers=edge.operator,
    )
    assert made.status_code == 201, made.text
    device_id = made.json()["device_id"]
    minted = await http.post(
        f"/api/v1/devices/{device_id}/credentials", json={"kind": kind}, headers=edge.operator
    )
    assert minted.status_code == 201, minted.text
    return device_id, minted.json()["secret"]


async def session_token(http: httpx.AsyncClient, device_id: str, secret: str) -> str:
    """Dialect S authentication, once auth knows the device."""

    async def auth() -> str | None:
        got = await http.post("/api/v1/device/auth", json={"deviceId": device_id, "deviceSecret": secret})
        assert got.status_code in (200, 401), got.text
        return got.json()["token"] if got.status_code == 200 else None

    return str(await eventually(auth, "dialect S authentication"))


async def queue(http: httpx.AsyncClient, edge: Edge, device_id: str, command_type: str) -> str:
    """Queue a command (operator API), once the commands service knows the device."""

    async def post() -> str | None:
        got = await http.post(
            f"/api/v1/devices/{device_id}/commands",
            json={"command_type": command_type},
            headers=edge.operator,
        )
        assert got.status_code in (201, 404), got.text
        return got.json()["command_id"] if got.status_code == 201 else None

    return str(await eventually(post, "the command queue to know the device"))


async def settled(http: httpx.AsyncClient, edge: Edge, cid: str, status: str) -> None:
    async def check() -> bool:
        got = await http.get(f"/api/v1/commands/{cid}", headers=edge.operator)
        assert got.status_code == 200, got.text
        return bool(got.json()["status"] == status)

    await eventually(check, f"command {cid} to be {status}")


@pytest.fixture
async def http(edge: Edge) -> Any:
    async with httpx.AsyncClient(base_url=edge.url, timeout=30) as client:
        yield client


async def test_portal_page_and_operator_api(edge: Edge, http: httpx.AsyncClient) -> None:
    page = await http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), page.text[:200]
    me = await http.get("/api/v1/auth/me", headers=edge.operator)
    assert me.status_code == 200 and me.json()["email"] == edge.email, me.text
    devices = await http.get("/api/v1/devices", headers=edge.operator)
    assert devices.status_code == 200, devices.text
    wrong = await http.post("/api/v1/auth/login", json={"email": edge.email, "password": "nope"})
    assert wrong.status_code == 401


async def test_dialect_s_auth_heartbeat_socket_and_result(edge: Edge, http: httpx.AsyncClient) -> None:
    device_id, secret = await new_device(http, edge, "secret")
    token = await session_token(http, device_id, secret)
    s = {"X-Device-Session": token}
    beat = await http.post(
        "/api/v1/device/heartbeat",
        json={"status": "healthy", "metrics": {"cpu": 5, "memory": 10, "uptime": 60}},
        headers=s,
    )
    assert beat.status_code == 200 and beat.json()["acknowledged"] is True, beat.text
    cid = await queue(http, edge, device_id, "ping")
    async with websockets.connect(f"{edge.ws_url}/api/v1/device/ws", additional_headers=s) as ws:
        first = await recv_json(ws)
        assert first["type"] == "connected" and first["deviceId"] == device_id, first
        command = await recv_until(ws, lambda f: f.get("type") == "command")
        assert command["payload"]["id"] == cid and command["payload"]["type"] == "ping", command
        await ws.send(json.dumps({"type": "heartbeat"}))
        assert (await recv_until(ws, lambda f: f.get("type") == "heartbeat_ack"))["timestamp"]
    result = await http.post(
        f"/api/v1/device/commands/{cid}/result",
        json={"status": "success", "executedAt": "2026-01-01T00:00:00Z", "output": "pong"},
        headers=s,
    )
    assert result.status_code == 200 and result.json()["success"] is True, result.text
    await settled(http, edge, cid, "completed")


async def test_dialect_k_register_metrics_pending_status(edge: Edge, http: httpx.AsyncClient) -> None:
    site = f"site-{uuid.uuid4().hex[:6]}"
    made = await http.post("/api/v1/sites/", json={"site_id": site, "name": "Edge"}, headers=edge.operator)
    assert made.status_code == 201, made.text
    device_id = f"pos-{uuid.uuid4().hex[:6]}"
    reg = await http.post(
        f"/api/v1/devices/sites/{site}/devices",
        json={"device_id": device_id, "name": "Till", "device_type": "pos_terminal"},
    )
    assert reg.status_code == 201, reg.text
    k = {"X-Device-ID": device_id, "X-API-Key": reg.json()["api_key"]}

    async def metrics() -> bool:
        got = await http.post(
            "/api/v1/analytics/device-metrics",
            json={"device_id": device_id, "cpu_percent": 12.5, "memory_percent": 40, "disk_percent": 50},
            headers=k,
        )
        assert got.status_code in (201, 401), got.text
        return got.status_code == 201

    await eventually(metrics, "dialect K metrics to be accepted")
    cid = await queue(http, edge, device_id, "restart")

    async def pending() -> list[Any]:
        got = await http.get("/api/v1/devices/pending", headers=k)
        assert got.status_code in (200, 401), got.text
        return [c for c in got.json() if c["command_id"] == cid] if got.status_code == 200 else []

    listed = await eventually(pending, "the command in the K poll")
    assert listed[0]["status"] == "pending" and listed[0]["command_type"] == "restart"
    done = await http.put(
        f"/api/v1/devices/{cid}/status", json={"status": "completed", "result": {}}, headers=k
    )
    assert done.status_code == 200, done.text
    await settled(http, edge, cid, "completed")


async def test_dialect_w_socket_and_its_token_in_no_log(edge: Edge, http: httpx.AsyncClient) -> None:
    w = {**edge.operator, "X-Workspace-ID": edge.workspace_id}
    made = await http.post("/api/devices", json={"name": "edge-w", "device_type": "esp32"}, headers=w)
    assert made.status_code == 201, made.text
    device_id, token = made.json()["id"], made.json()["token"]
    assert len(token) == 64

    async def connect() -> Any:
        try:
            return await websockets.connect(f"{edge.ws_url}/ws/device/{token}")
        except websockets.InvalidStatus as exc:  # 403 until the gateway has read the new token
            assert exc.response.status_code == 403
            return None

    ws = await eventually(connect, "the W token to be accepted")
    try:
        await ws.send(json.dumps({"type": "ping"}))
        assert await recv_until(ws, lambda f: f.get("type") == "pong") == {"type": "pong"}
    finally:
        await ws.close()
    listed = await http.get(
        f"/api/devices/{device_id}/commands?limit=5&token=query-secret-{token[:8]}", headers=w
    )
    assert listed.status_code == 200, listed.text

    def logged() -> str:
        return edge.access_log.read_text(errors="replace")

    deadline = time.monotonic() + 10  # nginx writes the socket's line when it closes
    while "/ws/device/[redacted]" not in logged():
        assert time.monotonic() < deadline, logged()[-2000:]
        await asyncio.sleep(0.1)
    text = logged() + "".join(p.read_text(errors="replace") for p in edge.error_logs if p.exists())
    assert token not in text
    assert "query-secret" not in text and "?" not in logged()
    assert f"/api/devices/{device_id}/commands" in logged()


async def test_agent_socket_and_enrolment(edge: Edge, http: httpx.AsyncClient) -> None:
    made = await http.post(
        "/api/v1/enrolment-tokens", json={"name": "edge", "max_uses": 1}, headers=edge.operator
    )
    assert made.status_code == 201, made.text
    enrolled = await http.post(
        "/api/v1/agent/enrol",
        json={"enrolment_token": made.json()["token"], "agent_id": uuid.uuid4().hex, "name": "edge-agent"},
    )
    assert enrolled.status_code == 201, enrolled.text
    device_id, secret = enrolled.json()["device_id"], enrolled.json()["device_secret"]
    token = await session_token(http, device_id, secret)
    async with websockets.connect(
        f"{edge.ws_url}/api/v1/agent/ws",
        subprotocols=["fleet.agent.v1"],  # type: ignore[list-item]
        additional_headers={"Authorization": f"Bearer {token}"},
    ) as ws:
        assert ws.subprotocol == "fleet.agent.v1"
        await ws.send(json.dumps({"type": "hello", "boot": "edge-1", "agent_version": "1.0"}))
        welcome = await recv_until(ws, lambda f: f.get("type") == "welcome")
        assert welcome["device_id"] == device_id


async def test_portal_socket_same_origin_through_the_edge(edge: Edge) -> None:
    async with websockets.connect(
        f"{edge.ws_url}/ws/portal",
        subprotocols=["fleet.portal.v1"],  # type: ignore[list-item]
        origin=edge.url,  # type: ignore[arg-type]
    ) as ws:
        token = edge.operator["Authorization"].removeprefix("Bearer ")
        await ws.send(json.dumps({"type": "hello", "token": token}))
        snapshot = await recv_until(ws, lambda f: f.get("type") == "snapshot")
        assert snapshot["workspace_id"] == edge.workspace_id


async def test_what_the_edge_answers_itself(edge: Edge, http: httpx.AsyncClient) -> None:
    assert (await http.get("/healthz")).json() == {"status": "ok", "service": "edge"}
    for path in ("/_services/auth/readyz", "/metrics"):
        hidden = await http.get(path)
        assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "NOT_FOUND", path
    big = await http.post(
        "/api/v1/device/heartbeat",
        content=b"x" * (1024 * 1024 + 1),
        headers={"Content-Type": "application/json"},
    )
    assert big.status_code == 413 and big.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"


def test_the_compose_healthcheck_of_the_edge_passes_against_it(edge: Edge) -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    argv = compose["services"]["edge"]["healthcheck"]["test"]
    assert argv[:3] == ["CMD", "bash", "-c"] and "/127.0.0.1/8080" in argv[3]
    port = edge.url.rsplit(":", 1)[1]
    assert subprocess.run(["bash", "-c", argv[3].replace("/8080", f"/{port}")], timeout=10).returncode == 0


def test_every_request_reached_the_service_fleet_routes_names(edge: Edge) -> None:
    """The access log's upstream of each proxied line is the service fleet/routes.py resolves."""
    # a request to each service, answered by it whatever it thinks of the caller
    for path in ("/", "/api/v1/auth/me", "/api/v1/devices", "/api/v1/devices/pending", "/api/v1/agent/x"):
        httpx.get(f"{edge.url}{path}", timeout=30)
    by_port = {f"127.0.0.1:{port}": name for name, port in edge.ports.items()}
    deadline = time.monotonic() + 10
    while True:
        lines = [line for line in edge.access_log.read_text().splitlines() if " up=127.0.0.1:" in line]
        seen = {by_port[line.split(" up=")[1].split()[0]] for line in lines}
        if seen == set(edge.ports) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert seen == set(edge.ports), lines
    for line in lines:
        path = line.split('"')[1].split()[1]
        upstream = line.split(" up=")[1].split()[0]
        want = resolve(path, ROUTES, set(edge.ports))
        assert want is not None and by_port[upstream] == want.service, line


async def test_each_service_is_a_role_with_no_access_to_the_others_schemas(edge: Edge) -> None:
    """What init.sql promises, with every service's migrations applied by now."""
    for name, url in edge.database_urls.items():
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT current_user") == name
            assert await conn.fetchval(f"SELECT count(*) FROM {name}.schema_migrations") > 0
            for other in SERVICES:
                if other != name:
                    with pytest.raises(asyncpg.InsufficientPrivilegeError):
                        await conn.fetchval(f"SELECT count(*) FROM {other}.outbox")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("CREATE TABLE public.intruder (i int)")
        finally:
            await conn.close()
