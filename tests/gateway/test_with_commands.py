"""The gateway with the real device and commands services (processes): an operator queues commands over
HTTP, a dialect W device and an agent get them on their sockets, and their results finish them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from libs.events.identity import Claims, Signer

from ..conftest import REDIS_URL, free_port
from .conftest import connect, recv, recv_until, send, served

ROOT = Path(__file__).resolve().parents[2]
KEY = "x" * 40  # the signing key of `served`


async def ready(port: int, deadline: float) -> None:
    async with httpx.AsyncClient() as client:
        while True:
            try:
                if (await client.get(f"http://127.0.0.1:{port}/readyz", timeout=2)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"port {port} not ready"
            await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_commands_over_w_and_agent_sockets_end_to_end(database_url: str, prefix: str):
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
    try:
        async with served(database_url, prefix) as world, httpx.AsyncClient() as http:
            deadline = time.monotonic() + 60
            for port in ports.values():
                await ready(port, deadline)
            now, ws_id = time.time(), str(uuid.uuid4())
            op = Signer(KEY).issue(
                Claims(
                    typ="operator",
                    sub="op",
                    ws=ws_id,
                    iat=now,
                    exp=int(now) + 600,
                    jti="j",
                    roles={ws_id: "owner"},
                )
            )
            h = {"Authorization": f"Bearer {op}"}
            dev = (
                await http.post(
                    f"http://127.0.0.1:{ports['device']}/api/v1/devices",
                    json={"name": "w", "device_type": "esp32", "credentials": ["token"]},
                    headers=h,
                )
            ).json()
            device_id, token = dev["device_id"], dev["credentials"]["token"]
            base = f"http://127.0.0.1:{ports['commands']}"

            async def queue(command_type: str) -> str:
                resp = await http.post(
                    f"{base}/api/v1/devices/{device_id}/commands",
                    json={"command_type": command_type},
                    headers=h,
                )
                assert resp.status_code == 201, resp.text
                return str(resp.json()["command_id"])

            async def command(cid: str) -> dict[str, Any]:
                return dict((await http.get(f"{base}/api/v1/commands/{cid}", headers=h)).json())

            async def until(cid: str, state: str) -> dict[str, Any]:
                started = time.monotonic()
                while (c := await command(cid))["state"] != state:
                    assert time.monotonic() - started < 10, c
                    await asyncio.sleep(0.05)
                return c

            waiting = await queue("reboot")  # queued while the device is offline
            async with connect(world.url(f"/ws/device/{token}")) as w:
                assert (await recv(w, 10))["command_id"] == waiting
                await until(waiting, "sent")
                live = await queue("ping")
                assert (await recv(w, 10)) == {"command_id": live, "command_type": "ping", "parameters": {}}
                await send(w, command_id=waiting, status="completed", result={"ok": True}, error=None)
                await send(w, command_id=live, status="failed", result=None, error="no")
                done = await until(waiting, "succeeded")
                assert (done["via"], done["result"]) == ("w_ws", {"ok": True})
                assert (await until(live, "failed"))["error"] == "no"

            _d, _w, session = world.session(device_id, ws_id)
            agent_cmd = await queue("status")
            async with connect(
                world.url("/api/v1/agent/ws"), subprotocols=["fleet.agent.v1", f"auth.{session}"]
            ) as a:
                await send(a, type="hello", boot="b1")
                cmd = await recv_until(a, "command", 10)
                assert (cmd["command_id"], cmd["attempt"]) == (agent_cmd, 1)
                await send(a, type="ack", command_id=agent_cmd)
                await until(agent_cmd, "delivered")
                await send(a, type="result", command_id=agent_cmd, status="succeeded", output="fine")
                assert (await recv_until(a, "result_ack"))["duplicate"] is False
                assert (await until(agent_cmd, "succeeded"))["output"] == "fine"
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(20) for p in procs]
        logs = b"".join(p.stderr.read() for p in procs if p.stderr)
    assert codes == [0, 0, 0], logs.decode(errors="replace")[-3000:]
    assert b"Traceback" not in logs, logs.decode(errors="replace")[-3000:]
