"""``fleet up`` answers ``/metrics`` once for every service on its one port (one process, one registry)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import Start, clean_env
from .test_fleet_up import start_up, stop_and_check

pytestmark = pytest.mark.slow


def test_fleet_up_serves_every_services_metrics(fleet: Start, tmp_path: Path) -> None:
    process, url = start_up(fleet, tmp_path, clean_env())
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            assert client.get("/_services/device/readyz").status_code == 200
            assert client.get("/api/v1/devices").status_code == 401
            resp = client.get("/metrics")
            assert resp.status_code == 200, resp.text
            own = client.get("/_services/telemetry/metrics")
            assert own.status_code == 200
        families = {f.name: f.samples for f in text_string_to_metric_families(resp.text)}
        groups = {s.labels["group"] for s in families["fleet_consumer_group_lag"]}
        assert {"device.presence", "telemetry.timeseries", "commands.lifecycle"} <= groups
        requests = {
            (s.labels["service"], s.labels["route"], s.labels["status"])
            for s in families["fleet_http_requests"]
            if s.name == "fleet_http_requests_total"
        }
        assert ("device", "/readyz", "200") in requests
        assert ("device", "/api/v1/devices", "401") in requests
        for name in (
            "fleet_dlq_entries",
            "fleet_gateway_agents",
            "fleet_gateway_portals",
            "fleet_commands_open",
        ):
            assert name in families, name
    finally:
        stop_and_check(process)
