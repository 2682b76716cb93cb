"""Pure rules of telemetry: the per-device rate window, flags and chart points."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.telemetry.domain import (
    DeviceRateLimit,
    InvalidHeartbeat,
    chart_points,
    chart_query,
    heartbeat_event,
    parse_k,
    parse_s,
)


def test_rate_window_counts_per_device_and_resets() -> None:
    limit = DeviceRateLimit(2)
    assert [limit.allow("a", 10.1) for _ in range(3)] == [True, True, False]
    assert limit.allow("b", 10.2)
    assert limit.allow("a", 11.0)  # a new window
    assert DeviceRateLimit(0).allow("a", 1.0)


def test_flagged_values_stay_off_charts() -> None:
    beat = parse_s({"status": "online", "metrics": {"cpu": 150, "memory": 20, "uptime": "x", "ok": True}})
    assert sorted(beat.flags) == ["cpu", "ok", "uptime"]
    event = heartbeat_event(beat, "d", "w", now=datetime.now(UTC))
    assert chart_points(event) == {"memory": 20.0}


def test_k_counts_accept_whole_number_floats() -> None:
    body = {"transaction_count": 3.0, "active_connections": -0.0, "cpu_percent": 1.0}
    beat = parse_k(body, "d")
    assert beat.metrics["transaction_count"] == 3 and type(beat.metrics["transaction_count"]) is int
    assert beat.metrics["active_connections"] == 0 and type(beat.metrics["active_connections"]) is int
    assert type(beat.metrics["cpu_percent"]) is float  # only the counts become integers


@pytest.mark.parametrize(
    "value", [3.5, -1.0, float("nan"), float("inf"), 1e20, 2.0**63, True, False, "3", [3], -1, 2**63]
)
def test_k_counts_refuse_what_is_not_a_count(value: object) -> None:
    for name in ("transaction_count", "active_connections"):
        with pytest.raises(InvalidHeartbeat, match=name):
            parse_k({name: value}, "d")


def test_raw_chart_span_is_capped() -> None:
    now = datetime(2026, 1, 2, tzinfo=UTC)
    assert chart_query({"from": "2026-01-01T00:00:00Z"}, now=now).step == "raw"  # 24 h: allowed
    with pytest.raises(InvalidHeartbeat) as refused:
        chart_query({"from": "2025-12-31T23:59:59Z"}, now=now)
    assert (refused.value.status, refused.value.code) == (422, "SPAN_TOO_LONG")
    assert "24 hours" in refused.value.message
    assert chart_query({"from": "2025-01-01T00:00:00Z", "step": "1h"}, now=now).step == "1h"
    with pytest.raises(InvalidHeartbeat, match="6 hours"):
        chart_query({"from": "2026-01-01T00:00:00Z"}, now=now, raw_max_span=timedelta(hours=6))
