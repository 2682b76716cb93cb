"""Which composed service answers a path: the route table of ``fleet up`` (pure, no I/O).

The table maps path prefixes to service names; the longest matching prefix wins. A prefix matches
whole path segments (``/api/device`` matches ``/api/device/x`` but not ``/api/devices``); a prefix
ending in ``/`` matches everything below it. Each service's own endpoints are also reachable under
``/_services/<name>/...`` with that prefix stripped (it becomes the ASGI ``root_path``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

Route = tuple[str, str]

# (path prefix, service). Dialect routes of PROTOCOLS.md join as services grow them, e.g.
# ("/api/v1/device/heartbeat", "telemetry").
ROUTES: tuple[Route, ...] = ()

SERVICES_PREFIX = "/_services/"


@dataclass(frozen=True, slots=True)
class Target:
    """Where a request goes: the service, and the prefix to strip (its ASGI ``root_path``)."""

    service: str
    root_path: str = ""


def prefix_matches(prefix: str, path: str) -> bool:
    """Whether ``prefix`` covers ``path`` on segment boundaries."""
    if prefix.endswith("/"):
        return path.startswith(prefix) or path == prefix[:-1]
    return path == prefix or path.startswith(prefix + "/")


def resolve(path: str, routes: Sequence[Route], services: Collection[str]) -> Target | None:
    """The target of a path: ``/_services/<name>/...`` first, then the longest table prefix."""
    if path.startswith(SERVICES_PREFIX):
        name = path[len(SERVICES_PREFIX) :].partition("/")[0]
        return Target(name, SERVICES_PREFIX + name) if name in services else None
    best: Route | None = None
    for prefix, service in routes:
        if prefix_matches(prefix, path) and (best is None or len(prefix) > len(best[0])):
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
