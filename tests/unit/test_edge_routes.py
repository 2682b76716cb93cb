"""The edge (infra/nginx/fleet.conf) routes every path to the service fleet/routes.py names.

nginx's location choice is emulated for the forms the file uses (``=``, ``^~``, plain prefixes and
``~`` regular expressions, tried in file order), then compared with :func:`fleet.routes.resolve` on
paths made from every prefix of the table: the prefix itself, below it, beside it (one character more,
which must not match), with ``*`` segments filled in.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fleet.routes import ROUTES, SERVICES_PREFIX, resolve

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "infra" / "nginx" / "fleet.conf"
UPSTREAMS = ROOT / "infra" / "nginx" / "upstreams.compose.conf"
SERVICES = {service for _prefix, service in ROUTES}
LOCATION = re.compile(r"location\s+(=|\^~|~\*?)?\s*(\S+)\s*\{([^{}]*)\}", re.S)


class Location:
    """One ``location`` block: how it matches and the service it passes to (None: answered here)."""

    def __init__(self, modifier: str, pattern: str, body: str) -> None:
        self.modifier, self.pattern = modifier, pattern
        m = re.search(r"proxy_pass\s+http://fleet_(\w+)\s*;", body)
        self.service = m.group(1) if m else None
        self.body = body

    def matches(self, path: str) -> bool:
        if self.modifier == "=":
            return path == self.pattern
        if self.modifier.startswith("~"):
            flags = re.I if self.modifier == "~*" else 0
            return re.search(self.pattern, path, flags) is not None
        return path.startswith(self.pattern)


def locations(text: str) -> list[Location]:
    """The server's locations in file order (named ``@`` locations left out)."""
    text = re.sub(r"#[^\n]*", "", text)
    text = re.sub(r"'[^']*'", "''", text)  # a returned JSON body has braces
    found = [Location(m.group(1) or "", m.group(2), m.group(3)) for m in LOCATION.finditer(text)]
    return [loc for loc in found if not loc.pattern.startswith("@")]


def nginx_pick(locs: list[Location], path: str) -> Location | None:
    """nginx's choice: an exact match; else the longest prefix, unless it is ``^~``, loses to the
    first matching regular expression in file order."""
    for loc in locs:
        if loc.modifier == "=" and loc.matches(path):
            return loc
    prefixes = [loc for loc in locs if loc.modifier in ("", "^~") and loc.matches(path)]
    longest = max(prefixes, key=lambda loc: len(loc.pattern), default=None)
    if longest is not None and longest.modifier == "^~":
        return longest
    for loc in locs:
        if loc.modifier.startswith("~") and loc.matches(path):
            return loc
    return longest


def probe_paths() -> list[str]:
    """Paths around every prefix of the table: on it, below it, beside it, with ``*`` filled in."""
    paths = {"/", "/index.html", "/static/app.js", "/ws", "/ws/portal", "/ws/device/0a1b2c"}
    for prefix, _service in ROUTES:
        for fill in ("x1", "pending", "credentials", "ws"):
            base = prefix.replace("*", fill).rstrip("/") or ""
            for suffix in ("", "/", "/more", "/more/deeper", "x", "-x"):
                paths.add(base + suffix if (base + suffix).startswith("/") else "/" + suffix)
    return sorted(paths)


@pytest.fixture(scope="module")
def locs() -> list[Location]:
    return locations(CONF.read_text())


@pytest.mark.parametrize("path", probe_paths())
def test_the_edge_sends_each_path_where_fleet_up_sends_it(locs: list[Location], path: str) -> None:
    want = resolve(path, ROUTES, SERVICES)
    got = nginx_pick(locs, path)
    assert want is not None
    assert got is not None, f"no location of fleet.conf matches {path}"
    assert got.service == want.service, f"{path}: nginx -> {got.service}, fleet/routes.py -> {want.service}"


def test_every_route_of_the_table_has_its_own_location(locs: list[Location]) -> None:
    """Each prefix appears as a location (so a new route needs a line in fleet.conf, not luck)."""
    for prefix, service in ROUTES:
        if prefix == "/":
            pattern = "/"
        else:
            body = "/".join("[^/]+" if seg == "*" else re.escape(seg) for seg in prefix.strip("/").split("/"))
            pattern = f"^/{body}(/|$)".replace("\\-", "-")
        same = [loc for loc in locs if loc.pattern == pattern]
        assert same, f"fleet.conf has no location {pattern!r} for the route {prefix!r}"
        assert same[0].service == service, f"{prefix}: fleet.conf sends it to {same[0].service}"


def test_only_health_metrics_and_the_private_prefix_are_answered_by_the_edge_itself(
    locs: list[Location],
) -> None:
    own = [loc.pattern for loc in locs if loc.service is None]
    assert own == ["/healthz", "/metrics", SERVICES_PREFIX]
    for path in ("/_services/auth/readyz", "/metrics"):
        assert nginx_pick(locs, path).service is None  # type: ignore[union-attr]


def test_every_upstream_is_a_known_service_on_its_port() -> None:
    text = CONF.read_text() + UPSTREAMS.read_text()
    used = set(re.findall(r"http://fleet_(\w+)", text))
    defined = dict(re.findall(r"upstream\s+fleet_(\w+)\s*\{\s*server\s+(\S+?);", UPSTREAMS.read_text()))
    assert used == SERVICES == set(defined)
    ports = {"gateway": 8000, "auth": 8001, "telemetry": 8002, "commands": 8003, "device": 8004}
    assert defined == {name: f"{name}:{port}" for name, port in ports.items()}


def test_sockets_upgrade_and_live_long(locs: list[Location]) -> None:
    text = CONF.read_text()
    assert "proxy_http_version 1.1;" in text
    assert re.search(r"proxy_set_header\s+Upgrade\s+\$http_upgrade;", text)
    assert re.search(r"proxy_set_header\s+Connection\s+\$fleet_connection;", text)
    for path in ("/api/v1/agent/ws", "/api/v1/device/ws", "/ws/portal", "/ws/device/abc"):
        loc = nginx_pick(locs, path)
        assert loc is not None and "proxy_read_timeout 1h;" in loc.body, path
    # a location that sets any proxy_set_header drops every inherited one: none may
    assert all("proxy_set_header" not in loc.body for loc in locs)


def test_the_access_log_never_shows_a_query_string_or_the_w_path_token() -> None:
    text = re.sub(r"#[^\n]*", "", CONF.read_text())
    fmt = re.search(r"log_format\s+fleet\s+(.*?);", text, re.S)
    assert fmt is not None
    for leak in ("$request ", '$request"', "$request_uri", "$args", "$query_string", "$uri", "$http_referer"):
        assert leak not in fmt.group(1), leak
    assert "$fleet_log_path" in fmt.group(1)
    assert re.search(r"access_log\s+\S+\s+fleet;", text)
    assert len(re.findall(r"access_log\s", text)) == 2  # the server's, and "off" for /healthz
