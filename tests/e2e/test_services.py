"""Each service runs as ``python -m services.<name> api|worker`` and reports readiness."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ..conftest import REDIS_URL, free_port

SERVICES = {"gateway": 8000, "auth": 8001, "telemetry": 8002, "commands": 8003, "device": 8004}
ROOT = Path(__file__).resolve().parents[2]


def wait_ready(url: str, deadline: float) -> httpx.Response:
    while True:
        try:
            resp = httpx.get(url, timeout=2)
            if resp.status_code == 200:
                return resp
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} not ready in time")
        time.sleep(0.1)


@pytest.mark.slow
def test_every_service_api_and_worker_run_and_stop_cleanly(database_url, prefix):
    env = {
        **os.environ,
        "REDIS_URL": REDIS_URL,
        "DATABASE_URL": database_url,
        "STREAM_PREFIX": prefix,
        "SIGNING_KEY": "x" * 40,
        "PYTHONPATH": str(ROOT),
    }
    ports = {name: free_port() for name in SERVICES}
    for name, port in ports.items():
        env[f"{name.upper()}_PORT"] = str(port)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name in SERVICES:
            for role in ("api", "worker"):
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", f"services.{name}", role],
                        env=env,
                        cwd=ROOT,
                        stderr=subprocess.PIPE,
                    )
                )
        deadline = time.monotonic() + 60
        for name, port in ports.items():
            body = wait_ready(f"http://127.0.0.1:{port}/readyz", deadline).json()
            assert body == {
                "status": "ready",
                "service": name,
                "checks": {"redis": "ok", "postgres": "ok", "migrations": "ok"},
            }
            assert httpx.get(f"http://127.0.0.1:{port}/healthz").json()["status"] == "ok"
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(20) for p in procs]
        logs = b"".join(p.stderr.read() for p in procs if p.stderr)
    assert codes == [0] * len(procs), logs.decode(errors="replace")[-3000:]
    assert b"Traceback" not in logs, logs.decode(errors="replace")[-3000:]


def test_missing_settings_exit_2_with_the_variable_named():
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env = {k: v for k, v in env.items() if not k.startswith("DEVICE_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "services.device", "api"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "DEVICE_REDIS_URL (or REDIS_URL)" in proc.stderr
    assert "DEVICE_DATABASE_URL (or DATABASE_URL)" in proc.stderr


@pytest.mark.slow
def test_api_with_several_workers_serves_and_stops(database_url, prefix, tmp_path):
    import psutil

    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": REDIS_URL,
        "DATABASE_URL": database_url,
        "STREAM_PREFIX": prefix,
        "SIGNING_KEY": "x" * 40,
        "PYTHONPATH": str(ROOT),
        "TELEMETRY_PORT": str(port),
    }
    log = tmp_path / "api.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.telemetry", "api", "--workers", "2"],
            env=env,
            cwd=ROOT,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 60
        wait_ready(f"http://127.0.0.1:{port}/readyz", deadline)
        # both processes finished starting (a stop during a worker's startup is another test's matter)
        while log.read_text(errors="replace").count("Application startup complete") < 2:
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.05)
        children = psutil.Process(proc.pid).children()
        assert len(children) >= 2  # the supervisor's API processes
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    logs = log.read_text(errors="replace")
    assert code == 0, logs[-3000:]
    assert "Traceback" not in logs, logs[-3000:]
    # every child ends (multiprocessing's resource tracker may take a moment after the supervisor)
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []
