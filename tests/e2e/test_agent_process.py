"""The device agent as a real process (``python -m agent``) against a real ``fleet up``.

One platform for the module (its own database and key prefix, presence interval 1 s / timeout 3 s)
and a fresh device per test: the agent is online on a portal socket within 2 s of its start (while
announcing itself on the LAN), a ``ping`` makes the round trip, SIGTERM leaves ``offline`` with
``agent_shutdown`` (over the socket, and over HTTP without one), a wrong secret ends the process
with exit code 1 after at most two authentication attempts, and an agent that enrols is announced
claimed with its new id. The outage and the redelivery after a restart, which stop the platform,
are in ``test_agent_outage.py``; this module also holds the harness both use.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from websockets.sync.client import connect

from agent.discovery import DiscoveredAgent, discover
from agent.runner import AGENT_VERSION

from ..agent.test_discovery import multicast_on_loopback
from .conftest import REDIS_URL, FleetProcess, as_from_a_terminal, clean_env, free_port, new_database

AGENT = [sys.executable, "-m", "agent"]
PRESENCE = {
    "DEVICE_PRESENCE_INTERVAL_S": "1",
    "DEVICE_PRESENCE_TIMEOUT_S": "3",
    # the interval the gateway's welcome and telemetry's nextHeartbeat tell the agent
    "GATEWAY_HEARTBEAT_INTERVAL_MS": "1000",
    "TELEMETRY_HEARTBEAT_INTERVAL_MS": "1000",
}


def poll(what: str, check: Callable[[], Any], timeout: float = 20.0, every: float = 0.1) -> Any:
    """``check()``'s first truthy value; fails naming ``what`` (and the last value) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}; last: {value!r}")
        time.sleep(every)


class Platform:
    """``fleet up`` on a fixed port, database and prefix, so it can be stopped and started again as itself."""

    def __init__(self, cwd: Path, database_url: str, prefix: str) -> None:
        self.cwd, self.prefix, self.port = cwd, prefix, free_port()
        self.env = clean_env(REDIS_URL=REDIS_URL, DATABASE_URL=database_url, STREAM_PREFIX=prefix, **PRESENCE)
        self.proc: FleetProcess | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start and wait until it serves (and, the first time, has seeded its demo workspace)."""
        self.proc = FleetProcess(["up", "--port", str(self.port)], self.cwd, self.env)
        self.proc.wait_for(r"fleet is up", timeout=120)

    def stop(self) -> None:
        """SIGTERM, and the clean exit it promises."""
        assert self.proc is not None
        code = self.proc.stop(signal.SIGTERM, timeout=60)
        assert code == 0, self.proc.report()

    def kill(self) -> None:
        """Teardown: whatever still runs."""
        if self.proc is not None:
            self.proc.kill_everything()

    def operator(self) -> httpx.Client:
        """An HTTP client with the demo owner's token (an operator created through the API by the seed)."""
        demo = json.loads((self.cwd / ".fleet" / "demo.json").read_text())
        client = httpx.Client(base_url=self.url, timeout=15)
        login = client.post(
            "/api/v1/auth/login", json={"email": demo["owner_email"], "password": demo["owner_password"]}
        )
        assert login.status_code == 200, login.text
        client.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
        return client

    def new_device(self, op: httpx.Client) -> tuple[str, str]:
        """A device created through the operator API: its id and secret."""
        made = op.post("/api/v1/devices", json={"name": f"agent-{uuid.uuid4().hex[:6]}", "device_type": "pi"})
        assert made.status_code == 201, made.text
        return made.json()["device_id"], made.json()["credentials"]["secret"]


@pytest.fixture(name="platform_for")
def platform_for_fixture(tmp_path: Path, run_id: str) -> Iterator[Callable[[], Platform]]:
    """A platform of the test's own (started by the test), with its database and keys removed after."""
    made: list[tuple[Platform, Any]] = []

    def make() -> Platform:
        db = new_database(run_id)
        prefix = f"t{run_id}-{uuid.uuid4().hex[:6]}:"
        platform = Platform(tmp_path / f"fleet{len(made)}", db.__enter__(), prefix)
        platform.cwd.mkdir()
        made.append((platform, db))
        return platform

    yield make
    for platform, db in made:
        platform.kill()
        drop_keys(platform.prefix)
        db.__exit__(None, None, None)


def drop_keys(prefix: str) -> None:
    """Delete every Redis key under ``prefix``."""
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


class Agent:
    """``python -m agent`` for one device, with its state dir, health port and stderr in a file."""

    def __init__(self, platform: Platform, device_id: str, secret: str, state_dir: Path, **env: str) -> None:
        self.state_dir, self.health_port = state_dir, free_port()
        self.stderr_path = state_dir.parent / f"{state_dir.name}-{time.monotonic_ns()}.stderr"
        self.env = {
            **clean_env(),
            "FLEET_AGENT_SERVER_URL": platform.url,
            "FLEET_AGENT_DEVICE_ID": device_id,
            "FLEET_AGENT_DEVICE_SECRET": secret,
            "FLEET_AGENT_STATE_DIR": str(state_dir),
            "FLEET_AGENT_HEALTH_PORT": str(self.health_port),
            "FLEET_AGENT_BACKOFF_CAP_S": "2",
            "FLEET_AGENT_DISCOVERY": "false",  # these tests are not about the LAN
            "MOCK_MODE": "true",
            **env,
        }
        self.started = time.monotonic()
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                AGENT, env=self.env, stdout=subprocess.DEVNULL, stderr=err, preexec_fn=as_from_a_terminal
            )

    def health(self) -> dict[str, Any] | None:
        """The agent's ``GET /health`` document, or None while it does not answer."""
        try:
            return httpx.get(f"http://127.0.0.1:{self.health_port}/health", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send ``sig``; the exit code (fails if it does not exit in time)."""
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the agent did not exit {timeout:g} s after signal {sig}\n{self.log()}")

    def log(self) -> str:
        """Its stderr (tail)."""
        return self.stderr_path.read_text(errors="replace")[-6000:]

    def kill(self) -> None:
        """Teardown."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture(name="agents")
def agents_fixture() -> Iterator[Callable[..., Agent]]:
    """Start agents; every one still running is killed afterwards."""
    started: list[Agent] = []

    def start(*args: Any, **kw: str) -> Agent:
        started.append(Agent(*args, **kw))
        return started[-1]

    yield start
    for agent in started:
        agent.kill()


class Portal:
    """A portal socket (``/ws/portal``, ``fleet.portal.v1``); a thread keeps its frames and arrival times."""

    def __init__(self, base_url: str, token: str) -> None:
        url = base_url.replace("http://", "ws://") + "/ws/portal"
        self._cm = connect(url, subprotocols=["fleet.portal.v1"], open_timeout=10)  # type: ignore[list-item]
        self.ws = self._cm.__enter__()
        self.ws.send(json.dumps({"type": "hello", "token": token}))
        self.frames: list[tuple[float, dict[str, Any]]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        poll("the portal snapshot", lambda: self.first(lambda f: f["type"] == "snapshot"), timeout=15)

    def _read(self) -> None:
        try:
            for message in self.ws:
                with self._lock:
                    self.frames.append((time.monotonic(), json.loads(message)))
        except Exception:  # closed by close(): the frames so far are what counts
            return

    def first(self, match: Callable[[dict[str, Any]], bool]) -> tuple[float, dict[str, Any]] | None:
        """The first frame ``match`` accepts, with its arrival time."""
        with self._lock:
            return next(((t, f) for t, f in self.frames if match(f)), None)

    def close(self) -> None:
        self._cm.__exit__(None, None, None)


def auth_attempts(prefix: str, device_id: str) -> int:
    """Device authentications counted by auth's per-device rate limit (a Redis counter, one per request)."""
    key = f"{prefix}auth:rl:dev:id:" + hashlib.sha256(device_id.encode()).hexdigest()[:32]
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return int(client.get(key) or 0)
    finally:
        client.close()


def history(op: httpx.Client, device_id: str) -> list[dict[str, Any]]:
    """The device's status transitions, oldest first."""
    got = op.get(f"/api/v1/devices/{device_id}/history?limit=100")
    assert got.status_code == 200, got.text
    return list(reversed(got.json()))


def device(op: httpx.Client, device_id: str) -> dict[str, Any]:
    got = op.get(f"/api/v1/devices/{device_id}")
    assert got.status_code == 200, got.text
    return dict(got.json())


def finished_command(op: httpx.Client, command_id: str, timeout: float = 20.0) -> dict[str, Any]:
    """The command once it has a result."""

    def done() -> dict[str, Any] | None:
        body = op.get(f"/api/v1/commands/{command_id}").json()
        return body if body.get("state") in ("succeeded", "failed", "expired", "cancelled") else None

    return dict(poll(f"command {command_id} to finish", done, timeout=timeout))


# ---- the module's platform ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, run_id: str) -> Iterator[Platform]:
    prefix = f"t{run_id}-{uuid.uuid4().hex[:6]}:"
    with new_database(run_id) as db:
        p = Platform(tmp_path_factory.mktemp("fleet"), db, prefix)
        try:
            p.start()
            yield p
        finally:
            p.kill()
            drop_keys(prefix)


@pytest.fixture(scope="module")
def op(platform: Platform) -> Iterator[httpx.Client]:
    client = platform.operator()
    try:
        yield client
    finally:
        client.close()


# ---- tests ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_online_on_the_portal_within_2s_then_ping_then_sigterm_is_agent_shutdown(
    platform: Platform, op: httpx.Client, agents: Callable[..., Agent], tmp_path: Path
) -> None:
    device_id, secret = platform.new_device(op)
    portal = Portal(platform.url, str(op.headers["Authorization"]).removeprefix("Bearer "))
    try:
        # announcing on the LAN, as an agent does by default: it must not delay going online
        agent = agents(platform, device_id, secret, tmp_path / "state", FLEET_AGENT_DISCOVERY="true")
        online = poll(
            "the device online on the portal",
            lambda: portal.first(lambda f: f.get("device_id") == device_id and f.get("status") == "online"),
            timeout=10,
        )
    finally:
        portal.close()
    after = online[0] - agent.started
    print(f"online on the portal {after:.2f} s after the agent process started")
    assert after <= 2.0, f"online {after:.2f} s after the agent started\n{agent.log()}"
    assert online[1]["reason"] == "first_heartbeat"

    made = op.post(
        f"/api/v1/devices/{device_id}/commands", json={"command_type": "ping", "parameters": {"n": 7}}
    )
    assert made.status_code == 201, made.text
    done = finished_command(op, made.json()["command_id"])
    assert done["state"] == "succeeded", (done, agent.log())
    assert done["result"]["pong"] is True and done["result"]["echo"] == {"n": 7}
    if multicast_on_loopback():
        lan = poll("the agent on the LAN", lambda: _announced(agent.health_port), timeout=15, every=0)
        assert (lan.device_id, lan.claimed, lan.version) == (device_id, True, AGENT_VERSION)

    assert agent.stop(signal.SIGTERM) == 0, agent.log()
    last = poll(
        "offline after SIGTERM",
        lambda: (h := history(op, device_id)) and h[-1]["status"] == "offline" and h[-1],
        timeout=10,
    )
    assert last["reason"] == "agent_shutdown", history(op, device_id)
    assert device(op, device_id)["status_reason"] == "agent_shutdown"


@pytest.mark.slow
def test_a_wrong_secret_exits_1_with_one_clear_line_and_no_retry_storm(
    platform: Platform, op: httpx.Client, agents: Callable[..., Agent], tmp_path: Path
) -> None:
    device_id, _secret = platform.new_device(op)
    assert auth_attempts(platform.prefix, device_id) == 0
    agent = agents(platform, device_id, "0" * 64, tmp_path / "state")
    try:
        code = agent.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the agent kept running with a wrong secret\n{agent.log()}")
    err = agent.log()
    assert code == 1, err
    said = [line for line in err.splitlines() if line.startswith("fleet-agent: ")]
    assert said == ["fleet-agent: device credentials rejected (HTTP 401 INVALID_CREDENTIALS): "
                    "check the device id and secret"], err  # fmt: skip
    assert 1 <= auth_attempts(platform.prefix, device_id) <= 2, err
    assert secret_free(err, _secret)


@pytest.mark.slow
def test_without_a_socket_sigterm_sends_a_final_offline_heartbeat(
    platform: Platform, op: httpx.Client, agents: Callable[..., Agent], tmp_path: Path
) -> None:
    device_id, secret = platform.new_device(op)
    agent = agents(platform, device_id, secret, tmp_path / "state", FLEET_AGENT_HTTP_ONLY="true")
    poll("online over HTTP", lambda: device(op, device_id)["status"] == "online")
    assert (agent.health() or {}).get("websocket") == "disconnected"
    assert agent.stop(signal.SIGTERM) == 0, agent.log()
    last = poll("offline after SIGTERM", lambda: (h := history(op, device_id)) and h[-1], timeout=10)
    assert (last["status"], last["reason"]) == ("offline", "agent_shutdown"), history(op, device_id)


@pytest.mark.slow
@pytest.mark.skipif(not multicast_on_loopback(), reason="no multicast in this environment")
def test_an_enrolled_agent_is_announced_claimed_with_its_new_device_id(
    platform: Platform, op: httpx.Client, agents: Callable[..., Agent], tmp_path: Path
) -> None:
    token = op.post("/api/v1/enrolment-tokens", json={"max_uses": 1})
    assert token.status_code == 201, token.text
    env = {"FLEET_AGENT_DISCOVERY": "true", "FLEET_AGENT_ENROLMENT_TOKEN": token.json()["token"]}
    agent = agents(platform, "", "", tmp_path / "state", **env)
    lan = poll("the agent claimed on the LAN", lambda: _claimed(agent.health_port), timeout=20, every=0)
    assert device(op, lan.device_id)["status"] == "online"
    assert agent.stop(signal.SIGTERM) == 0, agent.log()


def _claimed(health_port: int) -> DiscoveredAgent | None:
    found = _announced(health_port)
    return found if found is not None and found.claimed and found.device_id else None


def _announced(health_port: int) -> DiscoveredAgent | None:
    """The agent announcing ``health_port`` over mDNS, if one answers within 1.5 s."""
    return next((a for a in asyncio.run(discover(1.5)) if a.health_port == health_port), None)


def secret_free(text: str, secret: str) -> bool:
    """Neither the device's secret nor the wrong one appears."""
    return secret not in text and "0" * 64 not in text
