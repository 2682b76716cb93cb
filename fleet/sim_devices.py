"""The devices of ``fleet simulate``: an operator session, bulk creation, and the ``--reuse`` file.

The reuse file holds device secrets: it is written atomically and created with mode 0600 from the
start (never chmod-ed later), and a secret is never printed.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import httpx

from agent.config import Credentials

from .config import CommandError

BULK_PATH = "/api/v1/devices/bulk"
BULK_MAX = 1000  # the registry's limit per request
TIMEOUT_S = 60.0  # a bulk request of 1000 takes ~0.2 s on a quiet machine; a busy one, longer


def operator_token(server: str, email: str | None) -> str:
    """``$FLEET_TOKEN``, else a login with ``--email`` and ``$FLEET_PASSWORD`` (never a CLI argument)."""
    token = os.environ.get("FLEET_TOKEN")
    if token:
        return token
    password = os.environ.get("FLEET_PASSWORD")
    if not email or not password:
        raise CommandError("set $FLEET_TOKEN, or give --email with the password in $FLEET_PASSWORD", code=2)
    try:
        answer = httpx.post(
            server + "/api/v1/auth/login", json={"email": email, "password": password}, timeout=TIMEOUT_S
        )
    except httpx.HTTPError as exc:
        raise CommandError(f"cannot reach {server}: {type(exc).__name__}") from None
    if answer.status_code != 200:
        raise CommandError(f"operator login refused (HTTP {answer.status_code})")
    return str(answer.json()["access_token"])


def create_devices(server: str, token: str, count: int, prefix: str, start: int) -> list[Credentials]:
    """``count`` devices named ``<prefix>-<n>`` from ``start``, 1000 a request."""
    made: list[Credentials] = []
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=server, timeout=TIMEOUT_S, headers=headers) as client:
        while len(made) < count:
            body = {
                "count": min(BULK_MAX, count - len(made)),
                "name_prefix": prefix,
                "device_type": "virtual",
                "groups": ["simulated"],
                "start": start + len(made),
            }
            try:
                answer = client.post(BULK_PATH, json=body)
            except httpx.HTTPError as exc:
                raise CommandError(f"bulk device creation failed: {type(exc).__name__}") from None
            if answer.status_code != 201:
                raise CommandError(
                    f"bulk device creation refused (HTTP {answer.status_code}): {_code(answer)}"
                )
            made += [
                Credentials(item["device_id"], item["credentials"]["secret"])
                for item in answer.json()["items"]
            ]
    return made


def _code(answer: httpx.Response) -> str:
    try:
        return str(answer.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return answer.text[:100]


def read_reuse(path: Path) -> list[Credentials]:
    """The devices kept in a reuse file (none if it does not exist)."""
    try:
        data = json.loads(path.read_text())
        return [Credentials(d["device_id"], d["device_secret"]) for d in data["devices"]]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CommandError(f"unreadable reuse file {path}: {type(exc).__name__}", code=2) from None


def write_reuse(path: Path, server: str, creds: list[Credentials]) -> None:
    """Write the reuse file atomically, mode 0600 from the start."""
    devices = [{"device_id": c.device_id, "device_secret": c.device_secret} for c in creds]
    text = json.dumps({"server": server, "devices": devices})
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_known(server: str, cred: Credentials) -> None:
    """Fail early when reused devices belong to another platform (or a database since reset)."""
    body = {"deviceId": cred.device_id, "deviceSecret": cred.device_secret}
    try:
        answer = httpx.post(server + "/api/v1/device/auth", json=body, timeout=TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise CommandError(f"cannot reach {server}: {type(exc).__name__}") from None
    if answer.status_code in (401, 403):
        raise CommandError(
            f"the reused devices are not accepted by {server} (HTTP {answer.status_code}): "
            "another platform or a reset database? Remove the --reuse file to create new ones"
        )


def load_or_create(
    server: str, token: str, need: int, prefix: str, reuse: str | None
) -> tuple[list[Credentials], int]:
    """``need`` devices: those of the reuse file first, the rest created; and how many were created."""
    path = Path(reuse) if reuse else None
    kept = read_reuse(path) if path else []
    if kept:
        check_known(server, kept[0])
    missing = max(need - len(kept), 0)
    made = create_devices(server, token, missing, prefix, start=len(kept) + 1) if missing else []
    if path is not None and made:
        write_reuse(path, server, kept + made)
    return (kept + made)[:need], len(made)
