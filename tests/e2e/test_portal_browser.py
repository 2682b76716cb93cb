"""The portal in a real browser (Playwright driving Debian's Chromium, headless) against ``fleet up``.

Log in as the demo owner; a device that starts heartbeating turns online on the page within 2 s; it
turns offline after its timeout (1 s / 3 s here); a command sent from the device page shows
``succeeded`` with its result once the device (dialect S, taking it from its heartbeat answer)
reports it. Screenshots go to ``tests/e2e/artifacts/`` (git-ignored).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx
import pytest

from .conftest import REDIS_URL, Start, clean_env, free_port

ARTIFACTS = Path(__file__).with_name("artifacts")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.mark.slow
def test_portal_login_live_status_and_a_command(fleet: Start, tmp_path, own_database_url, prefix):
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is missing: run scripts/ensure-browser (make test does)"
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    port = free_port()
    env = clean_env(
        REDIS_URL=REDIS_URL,
        DATABASE_URL=own_database_url,
        STREAM_PREFIX=prefix,
        DEVICE_PRESENCE_INTERVAL_S="1",
        DEVICE_PRESENCE_TIMEOUT_S="3",
    )
    proc = fleet("up", "--port", str(port), cwd=tmp_path, env=env)
    proc.wait_for(r"fleet is up")
    seeded = proc.wait_for(r"owner login: |demo: not seeded")
    assert seeded.group(0) == "owner login: ", proc.report()
    demo = json.loads((tmp_path / ".fleet" / "demo.json").read_text())
    base = demo["url"].rstrip("/")
    device = demo["device_id"]
    http = httpx.Client(base_url=base, timeout=10)
    auth = http.post("/api/v1/device/auth", json={"deviceId": device, "deviceSecret": demo["device_secret"]})
    assert auth.status_code == 200, auth.text
    session = {"X-Device-Session": auth.json()["token"]}

    def heartbeat() -> dict:
        resp = http.post(
            "/api/v1/device/heartbeat",
            json={"status": "healthy", "metrics": {"cpu": 12.5, "memory": 40}},
            headers=session,
        )
        assert resp.status_code == 200, resp.text
        return resp.json()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        try:
            page.goto(base + "/")
            page.fill("input[name=email]", demo["owner_email"])
            page.fill("input[name=password]", demo["owner_password"])
            page.click("button[type=submit]")
            row = f'tr[data-device="{device}"]'
            page.wait_for_selector(row, timeout=10_000)
            page.wait_for_selector("#live.on", timeout=10_000)  # the portal socket is up
            page.screenshot(path=str(ARTIFACTS / "fleet-offline.png"))

            started = time.monotonic()
            heartbeat()
            page.wait_for_selector(f'{row}[data-status="online"]', timeout=2_000)
            online_after = time.monotonic() - started
            page.screenshot(path=str(ARTIFACTS / "fleet-online.png"))
            assert online_after < 2.0

            page.wait_for_selector(f'{row}[data-status="offline"]', timeout=3_000 + 3_000)
            page.screenshot(path=str(ARTIFACTS / "fleet-offline-again.png"))

            page.click(row)
            page.wait_for_selector("#command-form", timeout=5_000)
            page.fill("input[name=command_type]", "ping")
            page.fill("input[name=parameters]", '{"count": 1}')
            page.click("#command-form button[type=submit]")
            page.wait_for_selector(
                '#command-body tr[data-state="queued"], #command-body tr[data-state="sent"]', timeout=5_000
            )

            deadline, command = time.monotonic() + 10, None
            while command is None:  # the device takes the command from a heartbeat answer
                assert time.monotonic() < deadline, "the command never reached the device"
                command = next(iter(heartbeat().get("commands", [])), None)
                time.sleep(0.2)
            result = {
                "status": "success",
                "executedAt": "2026-11-25T12:00:00Z",
                "result": {"pong": 1764072000},
            }
            done = http.post(f"/api/v1/device/commands/{command['id']}/result", json=result, headers=session)
            assert done.status_code == 200, done.text
            page.wait_for_selector(
                f'#command-body tr[data-command="{command["id"]}"][data-state="succeeded"]', timeout=5_000
            )
            assert "1764072000" in page.inner_text(f'#command-body tr[data-command="{command["id"]}"]')
            page.screenshot(path=str(ARTIFACTS / "device-command.png"))
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "failure.png"))
            raise
        finally:
            browser.close()
            http.close()
