"""Seeding the demo workspace of ``fleet up`` (PROTOCOLS.md "Local run contract"), once.

Through the platform's own public API, after the port accepts connections: bootstrap a workspace
with open enrolment and its owner, create site ``site-001`` and one demo device, then write
``.fleet/demo.json`` (mode 0600). A run that stopped half-way resumes from ``demo.partial.json``.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

import httpx

OWNER_EMAIL = "owner@fleet.local"
SITE_ID = "site-001"


class SeedError(RuntimeError):
    """The demo could not be seeded (the platform keeps running)."""


def write_private(path: Path, data: dict[str, Any]) -> None:
    """Write JSON readable by the owner only, atomically."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def load_or_create_key(path: Path) -> str:
    """The platform's signing key, generated once and kept (mode 0600) beside the data."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key)
    return key


async def seed(url: str, data: Path) -> dict[str, Any]:
    """The demo facts, seeding them first if this data directory has none yet."""
    done = data / "demo.json"
    if done.exists():
        demo = dict(json.loads(done.read_text()))
        if demo.get("url") != url:  # another port this time: keep the file true
            demo["url"] = url
            write_private(done, demo)
        return demo
    partial = data / "demo.partial.json"
    state: dict[str, Any] = json.loads(partial.read_text()) if partial.exists() else {}
    if "owner_password" not in state:
        state = {"url": url, "owner_email": OWNER_EMAIL, "owner_password": secrets.token_urlsafe(18)}
        write_private(partial, state)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:  # argon2 logins on a busy box
        await _bootstrap(client, state)
        token = await _login(client, state)
        headers = {"Authorization": f"Bearer {token}"}
        await _site(client, headers)
        if "device_id" not in state:
            state.update(await _device(client, headers))
            write_private(partial, state)
    state.update(url=url, site_id=SITE_ID)
    write_private(done, state)
    partial.unlink(missing_ok=True)
    return state


async def _bootstrap(client: httpx.AsyncClient, state: dict[str, Any]) -> None:
    body = {
        "email": state["owner_email"],
        "password": state["owner_password"],
        "workspace_name": "Demo",
        "open_enrolment": True,
    }
    resp = await client.post("/api/v1/auth/bootstrap", json=body)
    if resp.status_code == 201:
        state["workspace_id"] = resp.json()["workspace_id"]
    elif resp.status_code != 409:
        raise SeedError(f"bootstrap failed: {resp.status_code} {resp.text[:200]}")


async def _login(client: httpx.AsyncClient, state: dict[str, Any]) -> str:
    resp = await client.post(
        "/api/v1/auth/login", json={"email": state["owner_email"], "password": state["owner_password"]}
    )
    if resp.status_code != 200:
        raise SeedError(
            "cannot log in as the demo owner: the platform was set up before without this data "
            f"directory's demo.json ({resp.status_code})"
        )
    body = resp.json()
    state["workspace_id"] = body["workspace_id"]
    return str(body["access_token"])


async def _site(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    resp = await client.post("/api/v1/sites", json={"site_id": SITE_ID, "name": "Demo site"}, headers=headers)
    if resp.status_code == 409:  # created by an earlier, interrupted seed: it must be this workspace's
        resp = await client.get(f"/api/v1/sites/{SITE_ID}", headers=headers)
    if resp.status_code not in (200, 201):
        raise SeedError(f"{SITE_ID} is not the demo workspace's: {resp.status_code} {resp.text[:200]}")


async def _device(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, str]:
    body = {"name": "demo-device", "device_type": "virtual", "site_id": SITE_ID, "credentials": ["secret"]}
    resp = await client.post("/api/v1/devices", json=body, headers=headers)
    if resp.status_code != 201:
        raise SeedError(f"creating the demo device failed: {resp.status_code} {resp.text[:200]}")
    created = resp.json()
    return {"device_id": created["device_id"], "device_secret": created["credentials"]["secret"]}


def describe(demo: dict[str, Any], path: Path) -> str:
    """What ``fleet up`` prints about the demo (the owner's password and the device secret included:
    they are for the person at this terminal, and the same file holds them)."""
    return (
        f"demo workspace {demo['workspace_id']}\n"
        f"  owner login: {demo['owner_email']} / {demo['owner_password']}\n"
        f"  site: {demo['site_id']} (open enrolment)\n"
        f"  demo device: {demo['device_id']} secret {demo['device_secret']}\n"
        f"  written to {path} (mode 0600)"
    )
