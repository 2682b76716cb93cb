"""The rules a heartbeat is held to, whichever service receives it (pure, standard library only).

Telemetry applies them to HTTP bodies (``POST /api/v1/agent/heartbeat``, dialect S flags) and the
gateway to agent-protocol frames on the socket: one copy, so a heartbeat refused on one path is
refused on the other. Types are the caller's business (JSON bodies and msgspec frames differ);
these are the value rules.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TypeGuard

STATUSES = frozenset({"healthy", "degraded", "online", "offline"})
MAX_METRICS = 64
MAX_SEQ = 2**63 - 1
ABSURD = 1e15  # no metric of a device is this large; bigger values are a bug or an attack
MAX_CLOCK_AHEAD = timedelta(days=1)  # a device clock this far ahead is wrong, not early
NAME_RE = re.compile(r"^[A-Za-z0-9_.:/-]{1,64}\Z")
BOOT_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}\Z")
# Percent-valued metrics by name (dialect S short names, agent and dialect K long names).
PERCENT = frozenset({"cpu", "memory", "disk", "cpu_percent", "memory_percent", "disk_percent", "error_rate"})
NON_NEGATIVE = frozenset({"uptime", "network_latency_ms"})


def is_number(v: object) -> TypeGuard[int | float]:
    """An int (not a bool) that fits 64 bits, or a float: float() of a huger int would overflow."""
    if isinstance(v, int) and not isinstance(v, bool):
        return -(2**63) <= v < 2**63
    return isinstance(v, float)


def out_of_range(name: str, value: float) -> bool:
    """Whether a numeric value cannot be a real reading of metric ``name``."""
    if not math.isfinite(value) or abs(value) >= ABSURD:
        return True
    if name in PERCENT or name.endswith("_percent"):
        return not 0 <= value <= 100
    return value < 0 and name in NON_NEGATIVE


def status_problem(status: object) -> str | None:
    """Why ``status`` is not a heartbeat status, or None."""
    if isinstance(status, str) and status in STATUSES:
        return None
    return f"status must be one of {', '.join(sorted(STATUSES))}"


def sent_at_problem(at: datetime, now: datetime | None) -> str | None:
    """Why an (aware) agent send time is implausible, or None."""
    if at.year < 2000:
        return "sent_at is before the year 2000"
    if now is not None and at > now + MAX_CLOCK_AHEAD:
        return "sent_at is more than a day in the future"
    return None


def agent_metrics_problem(metrics: Mapping[str, object], where: str = "") -> str | None:
    """Why an agent's metrics are refused (at most 64 named, finite, plausible numbers), or None."""
    if len(metrics) > MAX_METRICS:
        return f"{where}metrics: at most {MAX_METRICS} entries"
    for name, value in metrics.items():
        if not isinstance(name, str) or not NAME_RE.match(name):
            return f"{where}metrics: metric name {str(name)[:40]!r} must match {NAME_RE.pattern}"
        if not is_number(value) or out_of_range(name, float(value)):
            return f"{where}metrics.{name} must be a finite number in range"
    return None


def agent_heartbeat_problem(
    *, seq: int, sent_at: datetime, status: object, metrics: Mapping[str, object], now: datetime | None
) -> str | None:
    """Why an agent heartbeat (typed already) is refused, or None: seq, sent_at, status, metrics."""
    if not 0 <= seq <= MAX_SEQ:
        return "seq must be a non-negative integer"
    return sent_at_problem(sent_at, now) or status_problem(status) or agent_metrics_problem(metrics)
