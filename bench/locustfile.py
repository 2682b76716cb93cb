"""Locust: dialect S heartbeats from a pool of devices created through the platform's API.

Run it with ``bench/load.py`` (``make load``), which starts locust as a separate process: locust
patches the standard library through gevent, so it never runs inside a service or a test process.

At test start (once per local runner or per worker; the master sends nothing) an operator logs in,
``POST /api/v1/devices/bulk`` creates ``FLEET_DEVICES`` devices (1000 a request) and each device
authenticates once (``POST /api/v1/device/auth``). Users then ``POST /api/v1/device/heartbeat``
with the device's ``X-Device-Session``:

- realistic pacing (default): each user is one device sending one heartbeat every
  ``FLEET_HEARTBEAT_INTERVAL_S`` (30 s, the platform's default interval) with ``constant_pacing``,
  which counts from the user's start: spawn the users at ``users / interval`` per second (what
  ``bench/load.py`` does) and their phases spread evenly over the interval, so the rate is steady
  from the first second; a faster spawn rate sends the heartbeats in waves;
- ``FLEET_MAX=1``: no wait; each request takes the next device of the pool (as wrk's script in
  ``bench/heartbeat.py`` rotates sessions), for the client's maximum throughput.

Environment (secrets only here, never in URLs, request names or argv):

| variable | |
|---|---|
| ``--host`` | the heartbeat target (telemetry, or ``fleet up``'s one port); loopback only |
| ``FLEET_AUTH_URL``, ``FLEET_DEVICE_URL`` | auth and device APIs as separate processes (default: host) |
| ``FLEET_TOKEN`` or ``FLEET_EMAIL`` + ``FLEET_PASSWORD`` | the operator |
| ``FLEET_DEVICES`` | pool size per process (default 1000) |
| ``FLEET_HEARTBEAT_INTERVAL_S``, ``FLEET_MAX`` | pacing, above |
| ``FLEET_RUN_S`` | seconds of load after the setup, then quit (``-t`` counts the setup too) |
| ``FLEET_KEEP_DEVICES=1`` | keep the pool's devices at the end (default: delete them) |

Non-2xx answers are failures named ``POST /api/v1/device/heartbeat [<status>]`` (0: no answer).
Device auth honours ``429 Retry-After`` (the auth service allows 300 device logins a minute per
address by default; ``bench/load.py --layout`` raises that limit for the platform it starts).
"""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import gevent
import requests
from gevent.pool import Pool
from locust import FastHttpUser, constant, constant_pacing, events, task
from locust.exception import StopUser
from locust.runners import MasterRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import check_loopback  # the same loopback rule as bench/load.py

HEARTBEAT_PATH = "/api/v1/device/heartbeat"
BULK_MAX = 1000
SETUP_TIMEOUT_S = float(os.environ.get("FLEET_SETUP_TIMEOUT_S", "300"))
MAX = os.environ.get("FLEET_MAX", "") not in ("", "0")
INTERVAL_S = float(os.environ.get("FLEET_HEARTBEAT_INTERVAL_S", "30"))
log = logging.getLogger("fleet.load")


@dataclass
class Device:
    """One pool device: its id and session (the secret is dropped once the session is opened)."""

    device_id: str
    session: str
    booted: float = field(default_factory=lambda: time.time() - random.uniform(600, 30 * 86400))


@dataclass
class DevicePool:
    """The process's devices; ``next()`` hands them out round-robin (greenlets: no lock needed)."""

    devices: list[Device] = field(default_factory=list)
    i: int = 0
    failed: bool = False

    def next(self) -> Device:
        """The next device of the pool."""
        self.i = (self.i + 1) % len(self.devices)
        return self.devices[self.i]


POOL = DevicePool()


def _session() -> requests.Session:
    """A session whose connection pool fits the setup's 16 greenlets."""
    s = requests.Session()
    s.mount("http://", requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=16))
    return s


def _url(env_name: str, host: str) -> str:
    url = (os.environ.get(env_name) or host).rstrip("/")
    check_loopback(url)
    return url


def _operator(session: requests.Session, auth_url: str) -> str:
    token = os.environ.get("FLEET_TOKEN")
    if token:
        return token
    email, password = os.environ.get("FLEET_EMAIL"), os.environ.get("FLEET_PASSWORD")
    if not email or not password:
        raise RuntimeError("set FLEET_TOKEN, or FLEET_EMAIL and FLEET_PASSWORD")
    r = session.post(f"{auth_url}/api/v1/auth/login", json={"email": email, "password": password}, timeout=30)
    if r.status_code != 200:
        raise RuntimeError(f"operator login refused: HTTP {r.status_code}")
    return str(r.json()["access_token"])


def _create(session: requests.Session, device_url: str, token: str, count: int) -> list[tuple[str, str]]:
    """``count`` devices in bulk; (device id, secret) pairs."""
    prefix = f"load-{secrets.token_hex(3)}"
    made: list[tuple[str, str]] = []
    while len(made) < count:
        body = {
            "count": min(BULK_MAX, count - len(made)),
            "name_prefix": prefix,
            "device_type": "virtual",
            "groups": ["load"],
            "start": len(made) + 1,
        }
        r = session.post(
            f"{device_url}/api/v1/devices/bulk",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
        if r.status_code != 201:
            raise RuntimeError(f"bulk device creation refused: HTTP {r.status_code} {r.text[:200]}")
        made += [(d["device_id"], d["credentials"]["secret"]) for d in r.json()["items"]]
    return made


def _authenticate(
    session: requests.Session, auth_url: str, device_id: str, secret: str, deadline: float
) -> Device:
    while True:
        r = session.post(
            f"{auth_url}/api/v1/device/auth", json={"deviceId": device_id, "deviceSecret": secret}, timeout=30
        )
        if r.status_code == 200:
            return Device(device_id, r.json()["token"])
        if r.status_code == 429 and time.monotonic() < deadline:
            gevent.sleep(float(r.headers.get("Retry-After") or 1))
            continue
        raise RuntimeError(f"device auth refused: HTTP {r.status_code}")


def _delete(session: requests.Session, device_url: str, token: str, ids: list[str]) -> int:
    headers = {"Authorization": f"Bearer {token}"}

    def one(device_id: str) -> bool:
        r = session.delete(f"{device_url}/api/v1/devices/{device_id}", headers=headers, timeout=30)
        return r.status_code in (204, 404)

    return sum(Pool(8).imap_unordered(one, ids))


@events.test_start.add_listener
def create_pool(environment, **_kwargs) -> None:  # type: ignore[no-untyped-def]
    """Log in, create and authenticate the pool (local runner or worker; not the master)."""
    if isinstance(environment.runner, MasterRunner) or POOL.devices:
        return
    try:
        host = (environment.host or "").rstrip("/")
        check_loopback(host)
        auth_url, device_url = _url("FLEET_AUTH_URL", host), _url("FLEET_DEVICE_URL", host)
        count = int(os.environ.get("FLEET_DEVICES", "1000"))
        started = time.monotonic()
        deadline = started + SETUP_TIMEOUT_S
        with _session() as s:
            token = _operator(s, auth_url)
            made = _create(s, device_url, token, count)
            created = time.monotonic() - started
            POOL.devices = list(
                Pool(16).imap_unordered(lambda d: _authenticate(s, auth_url, *d, deadline), made)
            )
        environment.fleet = {"token": token, "device_url": device_url}
        environment.stats.reset_all()  # requests/s counts from here, not from before the setup
        run_s = float(os.environ.get("FLEET_RUN_S") or 0)
        if run_s > 0:  # locust's -t started before this setup: measure run_s of load after it
            gevent.spawn_later(run_s, environment.runner.quit)
        log.warning(
            "pool: %d devices created in %.1f s, authenticated in %.1f s; %s",
            len(POOL.devices),
            created,
            time.monotonic() - started - created,
            "max throughput (no wait)" if MAX else f"one heartbeat per user every {INTERVAL_S:g} s",
        )
    except Exception as exc:
        POOL.failed = True
        log.error("setup failed, no load sent: %s", exc)
        environment.process_exit_code = 1
        gevent.spawn(environment.runner.quit)


@events.test_stop.add_listener
def delete_pool(environment, **_kwargs) -> None:  # type: ignore[no-untyped-def]
    """Delete the pool's devices (soft delete: they leave every listing) unless FLEET_KEEP_DEVICES."""
    fleet = getattr(environment, "fleet", None)
    if not fleet or not POOL.devices or os.environ.get("FLEET_KEEP_DEVICES", "") not in ("", "0"):
        return
    with _session() as s:
        gone = _delete(s, fleet["device_url"], fleet["token"], [d.device_id for d in POOL.devices])
    log.warning("pool: %d of %d devices deleted", gone, len(POOL.devices))
    POOL.devices = []


class HeartbeatUser(FastHttpUser):
    """One device's heartbeats (realistic pacing), or the pool's in turn (FLEET_MAX=1)."""

    wait_time = constant(0) if MAX else constant_pacing(INTERVAL_S)

    def on_start(self) -> None:
        """Take a device (its phase in the interval is the user's start: see the spawn rate above)."""
        if POOL.failed or not POOL.devices:
            gevent.sleep(3600)  # the runner's quit, scheduled by the failed setup, ends this user
            raise StopUser()
        self.device = POOL.next()

    @task
    def heartbeat(self) -> None:
        """``POST /api/v1/device/heartbeat`` (dialect S); a non-2xx answer is a failure named by status."""
        device = POOL.next() if MAX else self.device
        body = {
            "status": "healthy",
            "metrics": {
                "cpu": round(random.uniform(2, 60), 1),
                "memory": round(random.uniform(20, 80), 1),
                "uptime": int(time.time() - device.booted),
            },
        }
        with self.client.post(
            HEARTBEAT_PATH,
            data=json.dumps(body),
            headers={"Content-Type": "application/json", "X-Device-Session": device.session},
            name=HEARTBEAT_PATH,
            catch_response=True,
        ) as r:
            if not 200 <= (r.status_code or 0) < 300:
                r.request_meta["name"] = f"{HEARTBEAT_PATH} [{r.status_code or 0}]"
                r.failure(f"HTTP {r.status_code or 0}")
