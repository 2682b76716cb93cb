"""The route table of ``fleet up``: prefix matching, longest match, /_services/, validation."""

from __future__ import annotations

import pytest

from fleet.routes import Target, check_routes, prefix_matches, resolve

SERVICES = ("auth", "device", "telemetry", "commands", "gateway")


@pytest.mark.parametrize(
    ("prefix", "path", "expected"),
    [
        ("/api/device", "/api/device", True),
        ("/api/device", "/api/device/heartbeat", True),
        ("/api/device", "/api/devices", False),
        ("/api/device", "/api", False),
        ("/portal/", "/portal/index.html", True),
        ("/portal/", "/portal", True),
        ("/portal/", "/portals", False),
        ("/", "/anything/at/all", True),
    ],
)
def test_prefix_matches_whole_segments(prefix: str, path: str, expected: bool) -> None:
    assert prefix_matches(prefix, path) is expected


def test_longest_prefix_wins_whatever_the_order() -> None:
    routes = [("/api", "gateway"), ("/api/v1/device/heartbeat", "telemetry"), ("/api/v1", "device")]
    assert resolve("/api/v1/device/heartbeat", routes, SERVICES) == Target("telemetry")
    assert resolve("/api/v1/device/commands", routes, SERVICES) == Target("device")
    assert resolve("/api/other", routes, SERVICES) == Target("gateway")
    assert resolve("/elsewhere", routes, SERVICES) is None


def test_an_empty_table_routes_nothing() -> None:
    assert resolve("/api/v1/device/heartbeat", [], SERVICES) is None


def test_service_paths_strip_their_prefix_into_root_path() -> None:
    assert resolve("/_services/device/readyz", [], SERVICES) == Target("device", "/_services/device")
    assert resolve("/_services/device", [], SERVICES) == Target("device", "/_services/device")
    assert resolve("/_services/nosuch/readyz", [], SERVICES) is None
    assert resolve("/_services/", [], SERVICES) is None


def test_service_paths_win_over_a_catch_all_route() -> None:
    assert resolve("/_services/auth/healthz", [("/", "gateway")], SERVICES) == Target(
        "auth", "/_services/auth"
    )


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        ([("/api", "nosuch")], "unknown service"),
        ([("api", "device")], "must start with '/'"),
        ([("/_services/x", "device")], "reserved"),
        ([("/_services", "device")], "reserved"),
        ([("/api", "device"), ("/api", "auth")], "listed twice"),
    ],
)
def test_bad_tables_are_rejected(routes: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_routes(routes, SERVICES)


def test_the_shipped_table_is_valid() -> None:
    from fleet.compose import SPECS
    from fleet.routes import ROUTES

    check_routes(ROUTES, SPECS)
    assert tuple(SPECS) == SERVICES


def test_wildcard_segments_and_specificity() -> None:
    from fleet.routes import ROUTES

    services = {"auth", "device", "telemetry", "commands", "gateway"}
    routes = list(ROUTES)
    check_routes(routes, services)
    assert resolve("/api/v1/devices/c1/status", routes, services) == Target("commands")  # K result
    assert resolve("/api/devices/d1/control", routes, services) == Target("commands")
    assert resolve("/api/v1/agent/ws", routes, services) == Target("gateway")
    assert resolve("/api/v1/agent/heartbeat", routes, services) == Target("telemetry")
    assert resolve("/ws/device/abc", routes, services) == Target("gateway")
    assert resolve("/", routes, services) == Target("gateway")
    assert resolve("/static/app.js", routes, services) == Target("gateway")
    assert resolve("/api/v1/devices/d1/credentials", routes, services) == Target("auth")
    assert resolve("/api/v1/devices/d1/commands", routes, services) == Target("commands")
    assert resolve("/api/v1/devices/pending", routes, services) == Target("commands")
    assert resolve("/api/v1/devices/d1", routes, services) == Target("device")
    assert resolve("/api/v1/devices/sites/site-001/devices", routes, services) == Target("device")
    assert resolve("/api/v1/devices", routes, services) == Target("device")
    assert resolve("/api/v1/device/auth", routes, services) == Target("auth")
    assert resolve("/api/devices/x/status", routes, services) == Target("device")
    assert resolve("/api/v1/sites/", routes, services) == Target("device")
    assert not prefix_matches("/api/v1/devices/*/credentials", "/api/v1/devices/credentials")
