"""The command queue end to end with real processes: device API, commands API and commands worker.

An operator registers a device (K API key) and queues commands; the device polls and reports one; a
gateway result event finishes another through the worker; a 1 s TTL expires a third within ~1 s.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import redis

from libs.events.envelope import decode_entry, entry_fields, new_envelope
from libs.events.identity import Claims, Signer
from libs.events.schemas.gateway import CommandResultReceived

from ..conftest import REDIS_URL, free_port
from .test_presence_processes import wait_ready

ROOT = Path(__file__).resolve().parents[2]
KEY = "e2e-signing-key-" + "k" * 32


@pytest.mark.slow
def test_queue_poll_result_and_expiry(database_url, prefix):
    ports = {"device": free_port(), "commands": free_port()}
    env = {
        **os.environ,
        "REDIS_URL": REDIS_URL,
        "DATABASE_URL": database_url,
        "STREAM_PREFIX": prefix,
        "SIGNING_KEY": KEY,
        "PYTHONPATH": str(ROOT),
        "DEVICE_PORT": str(ports["device"]),
        "COMMANDS_PORT": str(ports["commands"]),
    }
    roles = (("device", "api"), ("commands", "api"), ("commands", "worker"))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", f"services.{svc}", role], env=env, cwd=ROOT, stderr=subprocess.PIPE
        )
        for svc, role in roles
    ]
    r = redis.Redis.from_url(REDIS_URL)
    try:
        deadline = time.monotonic() + 60
        for port in ports.values():
            wait_ready(port, deadline)
        now, ws = time.time(), str(uuid.uuid4())
        op = Signer(KEY).issue(
            Claims(typ="operator", sub="op", ws=ws, iat=now, exp=int(now) + 600, jti="j", roles={ws: "owner"})
        )
        h = {"Authorization": f"Bearer {op}"}
        dev = httpx.post(
            f"http://127.0.0.1:{ports['device']}/api/v1/devices",
            json={"name": "pos", "device_type": "virtual", "credentials": ["api_key"]},
            headers=h,
        ).json()
        device_id, api_key = dev["device_id"], dev["credentials"]["api_key"]
        k = {"X-Device-ID": device_id, "X-API-Key": api_key}
        base = f"http://127.0.0.1:{ports['commands']}"

        def queue(command_type: str, **extra: object) -> str:
            resp = httpx.post(
                f"{base}/api/v1/devices/{device_id}/commands",
                json={"command_type": command_type, **extra},
                headers=h,
            )
            assert resp.status_code == 201, resp.text
            return str(resp.json()["command_id"])

        def state(cid: str) -> str:
            return str(httpx.get(f"{base}/api/v1/commands/{cid}", headers=h).json()["state"])

        def until(cid: str, expected: str, within: float) -> float:
            started = time.monotonic()
            while (got := state(cid)) != expected:
                assert time.monotonic() - started < within, f"{got} instead of {expected}"
                time.sleep(0.05)
            return time.monotonic() - started

        ping, restart = queue("ping"), queue("restart")
        listed = httpx.get(f"{base}/api/v1/devices/pending", headers=k).json()
        assert [c["command_id"] for c in listed] == [ping, restart]
        resp = httpx.put(
            f"{base}/api/v1/devices/{ping}/status",
            json={"status": "completed", "result": {"pong": 1}},
            headers=k,
        )
        assert resp.status_code == 200 and resp.json()["status"] == "completed"

        result = CommandResultReceived(
            command_id=restart,
            device_id=device_id,
            workspace_id=ws,
            dialect="w",
            status="failed",
            at=datetime.now(UTC),
            error="not now",
        )
        r.xadd(prefix + "events:gateway", entry_fields(new_envelope(result, producer="gateway")))
        until(restart, "failed", 10)

        short = queue("later", ttl_s=1)
        created = time.monotonic()
        until(short, "expired", 5)
        assert time.monotonic() - created < 1 + 1.0  # within ~1 s of the deadline

        def published() -> list[str]:
            return [decode_entry(f).type for _id, f in r.xrange(prefix + "events:commands")]

        want = {"command.queued.v1", "command.sent.v1", "command.finished.v1", "command.expired.v1"}
        started = time.monotonic()
        while not want <= set(published()):
            assert time.monotonic() - started < 10, published()
            time.sleep(0.05)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(20) for p in procs]
        logs = b"".join(p.stderr.read() for p in procs if p.stderr)
        r.close()
    assert codes == [0, 0, 0], logs.decode(errors="replace")[-3000:]
    assert b"Traceback" not in logs, logs.decode(errors="replace")[-3000:]
