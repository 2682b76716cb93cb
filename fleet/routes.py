"""Which composed service answers a path: the route table of ``fleet up`` (pure, no I/O).

The table maps path prefixes to service names. A prefix matches whole path segments
(``/api/device`` matches ``/api/device/x`` but not ``/api/devices``); a ``*`` segment matches any one
segment (``/api/v1/devices/*/credentials``); a prefix ending in ``/`` matches everything below it.
The most specific match wins: more segments first, then more literal (non-``*``) segments, so
``/api/v1/devices/pending`` beats ``/api/v1/devices/*`` and both beat ``/api/v1/devices``.
Each service's own endpoints are also reachable under
``/_services/<name>/...`` with that prefix stripped (it becomes the ASGI ``root_path``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

Route = tuple[str, str]

# (path prefix, service): every public route of PROTOCOLS.md, and the operator APIs.
ROUTES: tuple[Route, ...] = (
    ("/api/v1/auth", "auth"),
    ("/api/v1/workspaces", "auth"),
    ("/api/v1/operators", "auth"),
    ("/api/v1/audit", "auth"),
    ("/api/v1/device/auth", "auth"),
    ("/api/v1/devices/*/credentials", "auth"),
    ("/api/v1/device/heartbeat", "telemetry"),
    ("/api/v1/analytics", "telemetry"),
    ("/api/v1/agent", "telemetry"),
    ("/api/v1/devices/*/latest", "telemetry"),
    ("/api/v1/devices/*/metrics", "telemetry"),
    ("/api/v1/devices", "device"),
    ("/api/v1/sites", "device"),
    ("/api/v1/presence", "device"),
    ("/api/v1/enrolment-tokens", "device"),
    ("/api/v1/agent/enrol", "device"),
    ("/api/devices", "device"),
    # commands: operator queue/history/cancel, K polling and status, S results, W command routes
    ("/api/v1/commands", "commands"),
    ("/api/v1/devices/pending", "commands"),
    ("/api/v1/devices/*/commands", "commands"),
    ("/api/v1/devices/*/status", "commands"),
    ("/api/v1/device/commands", "commands"),
    ("/api/devices/*/command", "commands"),
    ("/api/devices/*/control", "commands"),
    ("/api/devices/*/commands", "commands"),
    # gateway: agent, dialect S and dialect W sockets, portal sockets
    ("/api/v1/agent/ws", "gateway"),
    ("/api/v1/device/ws", "gateway"),
    ("/ws/", "gateway"),
    # the portal page and its files: everything no other prefix claims
    ("/", "gateway"),
)

SERVICES_PREFIX = "/_services/"


@dataclass(frozen=True, slots=True)
class Target:
    """Where a request goes: the service, and the prefix to strip (its ASGI ``root_path``)."""

    service: str
    root_path: str = ""


def _segments(path: str) -> list[str]:
    return [seg for seg in path.split("/") if seg]


def prefix_matches(prefix: str, path: str) -> bool:
    """Whether ``prefix`` covers ``path`` on segment boundaries (``*`` = any one segment)."""
    if prefix.endswith("/") and path == prefix[:-1]:
        return True
    want, have = _segments(prefix), _segments(path)
    if len(have) < len(want) or (prefix.endswith("/") and len(have) == len(want) and not path.endswith("/")):
        return False
    return all(w in ("*", h) for w, h in zip(want, have, strict=False))


def specificity(prefix: str) -> tuple[int, int]:
    """How specific a prefix is: its segments, then its literal segments."""
    segs = _segments(prefix)
    return len(segs), sum(seg != "*" for seg in segs)


def resolve(path: str, routes: Sequence[Route], services: Collection[str]) -> Target | None:
    """The target of a path: ``/_services/<name>/...`` first, then the longest table prefix."""
    if path.startswith(SERVICES_PREFIX):
        name = path[len(SERVICES_PREFIX) :].partition("/")[0]
        return Target(name, SERVICES_PREFIX + name) if name in services else None
    best: Route | None = None
    for prefix, service in routes:
        if prefix_matches(prefix, path) and (best is None or specificity(prefix) > specificity(best[0])):
            best = (prefix, service)
    return Target(best[1]) if best is not None else None


def check_routes(routes: Sequence[Route], services: Collection[str]) -> None:
    """Reject a table naming an unknown service, a relative or duplicate prefix, or ``/_services/``."""
    seen: set[str] = set()
    for prefix, service in routes:
        if service not in services:
            raise ValueError(f"route {prefix!r} names unknown service {service!r}")
        if not prefix.startswith("/"):
            raise ValueError(f"route prefix {prefix!r} must start with '/'")
        if prefix_matches(SERVICES_PREFIX.rstrip("/"), prefix):
            raise ValueError(f"route prefix {prefix!r} is inside the reserved {SERVICES_PREFIX}")
        if prefix in seen:
            raise ValueError(f"route prefix {prefix!r} is listed twice")
        seen.add(prefix)
