"""Agent configuration and device credentials.

Sources, later wins: defaults < the TOML file given with ``--config`` (keys are the names below in
lower case, e.g. ``server_url = "http://127.0.0.1:8080"``) < ``<state_dir>/config.json`` (settings
applied by an ``update_config`` command) < environment variables ``FLEET_AGENT_<NAME>``.

| variable (``FLEET_AGENT_``) | default | meaning |
|---|---|---|
| ``SERVER_URL`` | ``http://127.0.0.1:8080`` | base URL; every route (and the agent socket) is under it |
| ``DEVICE_ID``, ``DEVICE_SECRET`` | | operator-created credentials (written to the credentials file) |
| ``ENROLMENT_TOKEN`` | | enrol with ``POST /api/v1/agent/enrol`` when there are no credentials |
| ``NAME``, ``DEVICE_TYPE`` | host name, none | sent when enrolling (no type: the token's) |
| ``STATE_DIR`` | ``$XDG_STATE_HOME/fleet-agent`` | credentials, agent id, spool, config.json |
| ``SCRIPTS_DIR`` | ``<state_dir>/scripts`` | the allow-list directory of ``run_script`` |
| ``HEALTH_PORT`` | 0 | local ``GET /health`` on 127.0.0.1 (0: off) |
| ``HEARTBEAT_INTERVAL_S`` | 30 | until the server says otherwise |
| ``MAX_INTERVAL_S`` | none | beat at least this often (set by ``update_config`` ``heartbeat_interval_s``) |
| ``BACKOFF_BASE_S``, ``BACKOFF_CAP_S`` | 1, 60 | reconnect backoff (full jitter) |
| ``STABLE_AFTER_S`` | 60 | a connection this old resets the backoff |
| ``OFFLINE_SAMPLE_EVERY`` | 10 | while unreachable, spool one heartbeat in N |
| ``SPOOL_MAX_HEARTBEATS`` | 10000 | spool bound (oldest dropped first) |
| ``HTTP_ONLY`` | false | no socket: HTTP heartbeats only (no commands) |
| ``HTTP_TIMEOUT_S`` | 10 | per HTTP request |
| ``MOCK`` (or ``MOCK_MODE``) | false | simulated metrics and commands |
| ``LOG_LEVEL`` | INFO | also logged to ``<state_dir>/agent.log`` (what ``collect_logs`` reads) |
| ``METRICS`` | all | comma-separated metric names to send (``update_config`` may set it) |
| ``DISCOVERY`` | true | announce the agent on the LAN over mDNS (``agent.lan``); false: stay silent |

The server's interval (``welcome``, ``nextHeartbeat``) replaces ``HEARTBEAT_INTERVAL_S``; presence is
judged by it, so ``MAX_INTERVAL_S`` can only shorten it, never lengthen it.

Files in the state dir: ``credentials.json`` (``{device_id, device_secret, workspace_id}``, mode 0600,
created so from the start), ``agent_id`` (a random id made once, before the first enrolment, so a
retried enrolment is recognised), ``spool.sqlite3`` (see ``agent.spool``), ``config.json``.
Secrets and tokens are never logged and never in a ``repr``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger("agent.config")

PREFIX = "FLEET_AGENT_"
CREDENTIALS_FILE = "credentials.json"
AGENT_ID_FILE = "agent_id"
RUNTIME_CONFIG_FILE = "config.json"
ENROL_PATH = "/api/v1/agent/enrol"
SECRET_FIELDS = frozenset({"device_secret", "enrolment_token"})
# What an update_config command may change while the agent runs.
RUNTIME_KEYS = frozenset(
    {
        "heartbeat_interval_s",
        "log_level",
        "metrics",
        "backoff_base_s",
        "backoff_cap_s",
        "offline_sample_every",
    }
)


class ConfigError(ValueError):
    """The configuration cannot work (exit code 2)."""


class EnrolmentRefused(Exception):
    """The server refused the enrolment token (exit code 1)."""


def _default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "fleet-agent"


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent process is configured with."""

    server_url: str = "http://127.0.0.1:8080"
    device_id: str | None = None
    device_secret: str | None = field(default=None, repr=False)
    enrolment_token: str | None = field(default=None, repr=False)
    name: str = field(default_factory=socket.gethostname)
    device_type: str | None = None
    state_dir: Path = field(default_factory=_default_state_dir)
    scripts_dir: Path | None = None
    health_port: int = 0
    heartbeat_interval_s: float = 30.0
    max_interval_s: float | None = None
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0
    stable_after_s: float = 60.0
    offline_sample_every: int = 10
    spool_max_heartbeats: int = 10_000
    http_only: bool = False
    http_timeout_s: float = 10.0
    mock: bool = False
    log_level: str = "INFO"
    metrics: list[str] | None = None
    discovery: bool = True

    @property
    def scripts(self) -> Path:
        """The run_script allow-list directory."""
        return self.scripts_dir or self.state_dir / "scripts"


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {raw!r}")


_PARSERS: dict[str, Callable[[str], Any]] = {
    "str": str,
    "str | None": lambda raw: raw or None,
    "int": int,
    "float": float,
    "float | None": lambda raw: float(raw) if raw.strip() else None,
    "bool": _parse_bool,
    "Path": lambda raw: Path(raw).expanduser(),
    "Path | None": lambda raw: Path(raw).expanduser() if raw else None,
    "list[str] | None": lambda raw: [n.strip() for n in raw.split(",") if n.strip()] or None,
}


def _coerce(name: str, kind: str, value: Any) -> Any:
    """Parse an env string, or check a TOML/JSON value, for field ``name`` (never echoing secrets)."""
    try:
        if isinstance(value, str):
            return _PARSERS[kind](value)
        if kind.startswith("float") and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if kind == "float | None" and value is None:
            return None
        if kind in ("int", "bool") and type(value).__name__ == kind:
            return value
        if kind == "list[str] | None" and isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value) or None
    except ValueError as exc:
        raise ConfigError(f"{name}: {'bad value' if name in SECRET_FIELDS else exc}") from None
    raise ConfigError(f"{name}: expected {kind}")


def load_config(
    env: Mapping[str, str] | None = None, file: Path | None = None, *, state_overrides: bool = True
) -> AgentConfig:
    """Defaults < TOML file < state-dir config.json < ``FLEET_AGENT_*`` environment."""
    env = os.environ if env is None else env
    kinds = {f.name: str(f.type) for f in fields(AgentConfig)}
    file_values = _read_toml(file, kinds) if file is not None else {}
    raw_env = {name: env[PREFIX + name.upper()] for name in kinds if PREFIX + name.upper() in env}
    if "mock" not in raw_env and "MOCK_MODE" in env:
        raw_env["mock"] = env["MOCK_MODE"]  # the seed documents' spelling
    env_values = {name: _coerce(name, kinds[name], raw) for name, raw in raw_env.items()}
    state_dir = env_values.get("state_dir") or file_values.get("state_dir") or _default_state_dir()
    runtime: dict[str, Any] = {}
    if state_overrides:
        runtime = _with_max_interval(
            {k: _coerce(k, kinds[k], v) for k, v in read_runtime_config(state_dir).items()}
        )
    return _validated(AgentConfig(**{**file_values, **runtime, **env_values}))


def _read_toml(file: Path, kinds: Mapping[str, str]) -> dict[str, Any]:
    try:
        data = tomllib.loads(file.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {file}: {exc}") from None
    unknown = sorted(set(data) - set(kinds))
    if unknown:
        raise ConfigError(f"unknown keys in {file}: {', '.join(unknown)}")
    return {name: _coerce(name, kinds[name], value) for name, value in data.items()}


def _validated(cfg: AgentConfig) -> AgentConfig:
    if not cfg.server_url.startswith(("http://", "https://")):
        raise ConfigError("server_url must start with http:// or https://")
    if cfg.heartbeat_interval_s <= 0 or cfg.backoff_base_s <= 0 or cfg.backoff_cap_s < cfg.backoff_base_s:
        raise ConfigError("intervals must be positive and backoff_cap_s >= backoff_base_s")
    if cfg.offline_sample_every < 1 or cfg.spool_max_heartbeats < 1:
        raise ConfigError("offline_sample_every and spool_max_heartbeats must be at least 1")
    return cfg


def _with_max_interval(runtime: dict[str, Any]) -> dict[str, Any]:
    """An operator's ``heartbeat_interval_s`` is also a maximum the server's interval cannot exceed."""
    if "heartbeat_interval_s" in runtime:
        return {**runtime, "max_interval_s": runtime["heartbeat_interval_s"]}
    return runtime


def read_runtime_config(state_dir: Path) -> dict[str, Any]:
    """Settings an ``update_config`` command applied earlier (only the runtime keys)."""
    try:
        data = json.loads((state_dir / RUNTIME_CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if k in RUNTIME_KEYS} if isinstance(data, dict) else {}


def apply_runtime_config(cfg: AgentConfig, changes: Mapping[str, Any]) -> AgentConfig:
    """Validate ``changes`` (runtime keys only), persist them, and return the new config."""
    unknown = sorted(set(changes) - RUNTIME_KEYS)
    if unknown:
        raise ValueError(f"not changeable at run time: {', '.join(unknown)}")
    kinds = {f.name: str(f.type) for f in fields(AgentConfig)}
    typed = {k: _coerce(k, kinds[k], v) for k, v in changes.items()}
    new = _validated(replace(cfg, **_with_max_interval(typed)))
    merged = {**read_runtime_config(cfg.state_dir), **typed}
    _write_file(cfg.state_dir / RUNTIME_CONFIG_FILE, json.dumps(merged, sort_keys=True), mode=0o644)
    return new


# --- credentials ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """A device's id and secret (the secret never in a repr)."""

    device_id: str
    device_secret: str = field(repr=False)
    workspace_id: str | None = None


def _write_file(path: Path, text: str, *, mode: int) -> None:
    """Write atomically; the file is created with ``mode`` from the start (never chmod-ed later)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_credentials(state_dir: Path, creds: Credentials) -> Path:
    """Store the credentials file (mode 0600)."""
    path = state_dir / CREDENTIALS_FILE
    body = {"device_id": creds.device_id, "device_secret": creds.device_secret}
    if creds.workspace_id:
        body["workspace_id"] = creds.workspace_id
    _write_file(path, json.dumps(body), mode=0o600)
    return path


def read_credentials(state_dir: Path) -> Credentials | None:
    """The stored credentials, or None when there are none."""
    path = state_dir / CREDENTIALS_FILE
    try:
        data = json.loads(path.read_text())
        return Credentials(str(data["device_id"]), str(data["device_secret"]), data.get("workspace_id"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"unreadable credentials file {path}: {type(exc).__name__}") from None


def agent_id(state_dir: Path) -> str:
    """This installation's random id, made once and kept (persisted before any enrolment).

    With the enrolment token it is the key of a retried enrolment, so it is a secret of 128 bits
    (the server refuses ids shorter than 32 characters); a shorter one kept by an older agent is
    replaced.
    """
    path = state_dir / AGENT_ID_FILE
    try:
        existing = path.read_text().strip()
    except FileNotFoundError:
        existing = ""
    if len(existing) >= 32:
        return existing
    new = "agt-" + secrets.token_hex(16)
    _write_file(path, new + "\n", mode=0o600)
    return new


async def enrol(cfg: AgentConfig, client: httpx.AsyncClient) -> Credentials:
    """``POST /api/v1/agent/enrol``; raises EnrolmentRefused (4xx) or httpx errors/ConnectionError."""
    if not cfg.enrolment_token:
        raise ConfigError("no enrolment token")
    body = {"enrolment_token": cfg.enrolment_token, "agent_id": agent_id(cfg.state_dir), "name": cfg.name}
    if cfg.device_type:
        body["device_type"] = cfg.device_type
    answer = await client.post(cfg.server_url.rstrip("/") + ENROL_PATH, json=body)
    if answer.status_code in (200, 201):
        data = answer.json()
        return Credentials(str(data["device_id"]), str(data["device_secret"]), data.get("workspace_id"))
    if 400 <= answer.status_code < 500 and answer.status_code != 429:
        raise EnrolmentRefused(f"enrolment refused (HTTP {answer.status_code}): check the enrolment token")
    raise ConnectionError(f"enrolment not answered (HTTP {answer.status_code})")


async def resolve_credentials(cfg: AgentConfig, client: httpx.AsyncClient) -> Credentials:
    """Configured id + secret, else the credentials file, else enrol; the result is stored."""
    if cfg.device_id and cfg.device_secret:
        creds = Credentials(cfg.device_id, cfg.device_secret)
        stored = read_credentials(cfg.state_dir)
        if stored is None or (stored.device_id, stored.device_secret) != (cfg.device_id, cfg.device_secret):
            write_credentials(cfg.state_dir, creds)
        return creds
    stored = read_credentials(cfg.state_dir)
    if stored is not None:
        return stored
    if not cfg.enrolment_token:
        raise ConfigError(
            "no credentials: set FLEET_AGENT_DEVICE_ID and FLEET_AGENT_DEVICE_SECRET, "
            "or FLEET_AGENT_ENROLMENT_TOKEN"
        )
    creds = await enrol(cfg, client)
    write_credentials(cfg.state_dir, creds)
    log.info("enrolled as device %s (workspace %s)", creds.device_id, creds.workspace_id)
    return creds
