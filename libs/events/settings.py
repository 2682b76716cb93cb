"""Settings from ``<SERVICE>_*`` environment variables into msgspec Structs, with clear errors."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

import msgspec

T = TypeVar("T", bound=msgspec.Struct)

# Settings that every service may take from an unprefixed variable shared by the whole platform.
SHARED = ("redis_url", "database_url", "stream_prefix", "consumer_name", "log_level", "signing_key")


class SettingsError(ValueError):
    """Configuration is missing or malformed; the message names every offending variable."""


class ServiceSettings(msgspec.Struct, kw_only=True, frozen=True):
    """What every service needs; each service's ``config.Settings`` extends it."""

    redis_url: Annotated[str, msgspec.Meta(description="Redis URL, e.g. redis://127.0.0.1:6379/0")]
    database_url: Annotated[str, msgspec.Meta(description="Postgres URL (may hold a password)")]
    host: str = "127.0.0.1"
    port: int = 0
    stream_prefix: Annotated[
        str, msgspec.Meta(description="prefix of every stream key; isolates test runs")
    ] = ""
    consumer_name: str = ""
    log_level: str = "INFO"
    max_body_bytes: int = 1_048_576
    claim_idle_ms: int = 30_000
    max_deliveries: int = 5
    otel_exporter: str = "none"
    relay_poll_s: float = 1.0
    # Off by default: a line per request costs more CPU than the HTTP layer on the heartbeat path,
    # and URLs may carry a path token (dialect W). Metrics (not logs) count requests.
    access_log: bool = False
    signing_key: Annotated[
        str, msgspec.Meta(description="secret (>= 32 chars) that signs sessions; the same in every service")
    ] = ""


def env_name(prefix: str, field: str) -> str:
    """``DEVICE`` + ``redis_url`` -> ``DEVICE_REDIS_URL``."""
    return f"{prefix.upper()}_{field.upper()}"


def load_settings(cls: type[T], prefix: str, environ: Mapping[str, str] | None = None) -> T:
    """Build ``cls`` from ``<PREFIX>_<FIELD>`` variables (shared fields also from ``<FIELD>``)."""
    env = os.environ if environ is None else environ
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    values: dict[str, Any] = {}
    missing = []
    for f in info.fields:
        name = env_name(prefix, f.name)
        if name in env:
            values[f.name] = env[name]
        elif f.name in SHARED and f.name.upper() in env:
            values[f.name] = env[f.name.upper()]
        elif f.required:
            alt = f" (or {f.name.upper()})" if f.name in SHARED else ""
            hint = _description(f.type)
            missing.append(f"{name}{alt}" + (f": {hint}" if hint else ""))
    if missing:
        raise SettingsError("missing required settings:\n  " + "\n  ".join(missing))
    try:
        return msgspec.convert(values, cls, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(_explain(str(exc), prefix)) from None


def _description(t: Any) -> str:
    if isinstance(t, msgspec.inspect.Metadata) and t.extra_json_schema:
        return str(t.extra_json_schema.get("description", ""))
    return ""


def _explain(message: str, prefix: str) -> str:
    # msgspec says "Expected `int`, got `str` - at `$.port`"; name the variable instead.
    m = re.search(r"at `\$\.(\w+)`", message)
    if not m:
        return message
    field = m.group(1)
    return f"{env_name(prefix, field)}: {message[: m.start()].rstrip(' -')}"


def consumer_name(service: str, configured: str = "") -> str:
    """``<service>-<host>-<pid>`` unless configured (stable names let a restart reclaim its own)."""
    return configured or f"{service}-{socket.gethostname()}-{os.getpid()}"
