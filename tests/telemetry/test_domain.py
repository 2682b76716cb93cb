"""Pure rules of telemetry: the per-device rate window, flags and chart points."""

from __future__ import annotations

from datetime import UTC, datetime

from services.telemetry.domain import DeviceRateLimit, chart_points, heartbeat_event, parse_s


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
