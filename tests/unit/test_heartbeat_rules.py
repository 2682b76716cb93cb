"""The shared heartbeat value rules (pure): the one copy both telemetry and the gateway apply."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from libs.events import heartbeat_rules as r

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "ok"),
    [(1, True), (1.5, True), (True, False), (None, False), ("1", False), (2**63, False), (-(2**63), True)],
)
def test_is_number(value: object, ok: bool) -> None:
    assert r.is_number(value) is ok


@pytest.mark.parametrize(
    ("name", "value", "bad"),
    [
        ("cpu", 100.0, False),
        ("cpu", 100.1, True),
        ("disk_percent", -0.1, True),
        ("temperature", -20.0, False),
        ("uptime", -1.0, True),
        ("anything", float("nan"), True),
        ("anything", float("inf"), True),
        ("anything", 1e15, True),
        ("anything", -9.9e14, False),
    ],
)
def test_out_of_range(name: str, value: float, bad: bool) -> None:
    assert r.out_of_range(name, value) is bad


def test_agent_heartbeat_problems_name_the_rule() -> None:
    def problem(**kw: object) -> str | None:
        args: dict[str, object] = {"seq": 1, "sent_at": NOW, "status": "online", "metrics": {"cpu": 5}}
        return r.agent_heartbeat_problem(**{**args, **kw}, now=NOW)  # type: ignore[arg-type]

    assert problem() is None
    assert problem(seq=-1) == "seq must be a non-negative integer"
    assert problem(sent_at=NOW + timedelta(days=2)) == "sent_at is more than a day in the future"
    assert problem(sent_at=datetime(1999, 12, 31, tzinfo=UTC)) == "sent_at is before the year 2000"
    assert "status must be one of" in (problem(status="weird") or "")
    assert "must match" in (problem(metrics={"bad name": 1}) or "")
    assert problem(metrics={"memory": -1}) == "metrics.memory must be a finite number in range"
    assert problem(metrics={"flag": True}) == "metrics.flag must be a finite number in range"
    assert problem(metrics={f"m{i}": 1 for i in range(65)}) == "metrics: at most 64 entries"
