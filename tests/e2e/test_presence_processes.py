"""Presence end to end with real processes: telemetry API, device API and device worker.

A device heartbeats -> online; it stops -> late, then offline at the timeout; it resumes -> online
with reason heartbeat_resumed. Intervals are short (1 s / 3 s) through the device worker's settings.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from libs.events.identity import Claims, Signer

from ..conftest import REDIS_URL, free_port

ROOT = Path(__file__).resolve().parents[2]
KEY = "e2e-signing-key-" + "k" * 32


def wait_ready(port: int, deadline: float) -> None:
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"port {port} not ready"
        time.sleep(0.1)


@pytest.mark.slow
def test_online_late_offline_and_back(database_url, prefix):
    ports = {"device": free_port(), "telemetry": free_port()}
    env = {
        **os.environ,
        "REDIS_URL": REDIS_URL,
        "DATABASE_URL": database_url,
        "STREAM_PREFIX": prefix,
        "SIGNING_KEY": KEY,
        "PYTHONPATH": str(ROOT),
        "DEVICE_PORT": str(ports["device"]),
        "TELEMETRY_PORT": str(ports["telemetry"]),
        "DEVICE_PRESENCE_INTERVAL_S": "1",
        "DEVICE_PRESENCE_TIMEOUT_S": "3",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", f"services.{svc}", role], env=env, cwd=ROOT, stderr=subprocess.DEVNULL
        )
        for svc, role in (("device", "api"), ("device", "worker"), ("telemetry", "api"))
    ]
    try:
        deadline = time.monotonic() + 60
        for port in ports.values():
            wait_ready(port, deadline)
        signer, now, ws = Signer(KEY), time.time(), str(uuid.uuid4())
        op = signer.issue(
            Claims(typ="operator", sub="op", ws=ws, iat=now, exp=int(now) + 600, jti="j", roles={ws: "owner"})
        )
        dev = httpx.post(
            f"http://127.0.0.1:{ports['device']}/api/v1/devices",
            json={"name": "pi", "device_type": "raspberry_pi"},
            headers={"Authorization": f"Bearer {op}"},
        ).json()
        device_id = dev["device_id"]
        session = signer.issue(
            Claims(typ="device", sub=device_id, ws=ws, iat=now, exp=int(now) + 600, jti="s", cid="c")
        )

        def beat() -> None:
            r = httpx.post(
                f"http://127.0.0.1:{ports['telemetry']}/api/v1/device/heartbeat",
                json={"status": "healthy", "metrics": {"cpu": 5}},
                headers={"X-Device-Session": session},
            )
            assert r.status_code == 200, r.text

        def state() -> tuple[str, str]:
            d = httpx.get(
                f"http://127.0.0.1:{ports['device']}/api/v1/devices/{device_id}",
                headers={"Authorization": f"Bearer {op}"},
            ).json()
            return d["status"], d["status_reason"]

        def until(expected: tuple[str, str], within: float) -> float:
            started = time.monotonic()
            while (got := state()) != expected:
                assert time.monotonic() - started < within, f"{got} instead of {expected}"
                time.sleep(0.05)
            return time.monotonic() - started

        assert state() == ("offline", "never_seen")
        beat()
        until(("online", "first_heartbeat"), 5)
        last_beat = time.monotonic()
        until(("late", "heartbeat_missed"), 5)
        until(("offline", "heartbeat_timeout"), 5)
        assert time.monotonic() - last_beat < 3 + 1.5  # offline within ~1 s of the 3 s deadline
        beat()
        until(("online", "heartbeat_resumed"), 5)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(20) for p in procs]
    assert codes == [0, 0, 0]
