"""``fleet simulate`` as a real process against a real ``fleet up`` (black box): 20 devices created in
bulk come online, their heartbeats are stored, one of them runs a command, and after ``--duration``
the simulator exits 0 with every device offline for ``agent_shutdown``."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import FLEET, REDIS_URL, Start, as_from_a_terminal, clean_env, free_port

DEVICES, DURATION = 20, 8


def poll(fetch: Callable[[], Any], done: Callable[[Any], bool], timeout: float = 15.0) -> Any:
    """``fetch()`` every 0.1 s until ``done`` says so or time runs out; the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        got = fetch()
        if done(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


@pytest.mark.slow
def test_simulated_fleet_comes_online_runs_a_command_and_leaves(
    fleet: Start, tmp_path, own_database_url, prefix
):
    port = free_port()
    env = clean_env(
        REDIS_URL=REDIS_URL,
        DATABASE_URL=own_database_url,
        STREAM_PREFIX=prefix,
        DEVICE_PRESENCE_INTERVAL_S="1",
        DEVICE_PRESENCE_TIMEOUT_S="3",
    )
    up = fleet("up", "--port", str(port), cwd=tmp_path, env=env)
    up.wait_for(r"fleet is up")
    demo = json.loads((tmp_path / ".fleet" / "demo.json").read_text())
    base, name = demo["url"].rstrip("/"), f"sim{time.monotonic_ns() % 10**6}"
    reuse = tmp_path / "devices.json"
    sim_env = {**clean_env(), "FLEET_PASSWORD": demo["owner_password"]}
    argv = [*FLEET, "simulate", "--server", base, "--email", demo["owner_email"], "--devices", str(DEVICES)]
    argv += ["--duration", str(DURATION), "--interval", "1", "--name-prefix", name, "--reuse", str(reuse)]
    err = (tmp_path / "simulate.stderr").open("wb")
    sim = subprocess.Popen(
        argv, env=sim_env, stdout=subprocess.PIPE, stderr=err, preexec_fn=as_from_a_terminal
    )
    try:
        with httpx.Client(base_url=base, timeout=10) as c:
            login = {"email": demo["owner_email"], "password": demo["owner_password"]}
            op = {
                "Authorization": f"Bearer {c.post('/api/v1/auth/login', json=login).json()['access_token']}"
            }
            _while_running(c, op, name, reuse)
            out, _ = sim.communicate(timeout=DURATION + 30)
            assert sim.returncode == 0, _report(out, tmp_path)
            summary = dict(line.split(": ", 1) for line in out.decode().splitlines() if ": " in line)
            assert summary["created"] == str(DEVICES) and summary["clean_exits"] == str(DEVICES), out
            assert (summary["commands"], summary["errors"]) == ("1", "0"), out
            left = poll(lambda: _devices(c, op, name), lambda ds: _all_shut_down(ds), timeout=10)
            assert _all_shut_down(left), [(d["name"], d["status"], d["status_reason"]) for d in left]
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.wait()
        err.close()
    assert up.stop() == 0


def _while_running(c: httpx.Client, op: dict[str, str], name: str, reuse: Path) -> None:
    """While the simulator runs: bulk-created devices, all online, heartbeats stored, a command done."""
    created = poll(lambda: _devices(c, op, name), lambda ds: len(ds) == DEVICES)
    assert sorted(d["name"] for d in created) == [f"{name}-{n:05d}" for n in range(1, DEVICES + 1)]
    assert reuse.stat().st_mode & 0o777 == 0o600
    assert len(json.loads(reuse.read_text())["devices"]) == DEVICES
    online = poll(lambda: _devices(c, op, name), lambda ds: all(d["status"] == "online" for d in ds))
    assert [d["status"] for d in online] == ["online"] * DEVICES
    device = online[0]["device_id"]
    latest = poll(
        lambda: c.get(f"/api/v1/devices/{device}/latest", headers=op), lambda r: r.status_code == 200
    )
    assert latest.status_code == 200 and "cpu" in latest.json()["metrics"], latest.text
    made = c.post(f"/api/v1/devices/{device}/commands", json={"command_type": "ping"}, headers=op)
    assert made.status_code == 201, made.text
    url = f"/api/v1/commands/{made.json()['command_id']}"
    done = poll(lambda: c.get(url, headers=op).json(), lambda cmd: cmd["state"] == "succeeded", timeout=5)
    assert (done["state"], done["via"], done["result"]["pong"]) == ("succeeded", "agent", True), done


def _devices(c: httpx.Client, op: dict[str, str], name: str) -> list[dict[str, Any]]:
    listed = c.get("/api/v1/devices", params={"q": f"{name}-", "limit": 100}, headers=op)
    assert listed.status_code == 200, listed.text
    return list(listed.json()["items"])


def _all_shut_down(devices: list[dict[str, Any]]) -> bool:
    return len(devices) == DEVICES and all(
        (d["status"], d["status_reason"]) == ("offline", "agent_shutdown") for d in devices
    )


def _report(out: bytes, tmp_path: Path) -> str:
    err = (tmp_path / "simulate.stderr").read_text(errors="replace")[-3000:]
    return f"--- stdout\n{out.decode(errors='replace')}\n--- stderr\n{err}\n{os.linesep}"
