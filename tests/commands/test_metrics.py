"""The queue's metrics: lifecycle steps counted by event, the open backlog observed per state."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from libs.events.schemas.commands import CommandExpired, CommandFinished, CommandSent
from services.commands import metrics

NOW = datetime(2026, 1, 1, tzinfo=UTC)
IDS = {"command_id": "c", "device_id": "d", "workspace_id": "w"}


def test_steps_are_counted_by_event(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, dict[str, str]]] = []

    class Counter:
        def add(self, n: int, attrs: dict[str, str]) -> None:
            calls.append((n, attrs))

    monkeypatch.setitem(metrics._instruments, "steps", Counter())
    metrics.count(
        [
            CommandSent(**IDS, at=NOW, via="k_poll"),
            CommandExpired(**IDS, at=NOW),
            CommandFinished(**IDS, status="failed", at=NOW),
        ]
    )
    assert calls == [
        (1, {"step": "sent"}),
        (1, {"step": "expired"}),
        (1, {"step": "finished", "status": "failed"}),
    ]


def test_backlog_is_observed_per_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "backlog", {"queued": 3, "sent": 1})
    seen = [(o.value, dict(o.attributes or {})) for o in metrics._observe(None)]  # type: ignore[arg-type]
    assert seen == [(3, {"state": "queued"}), (1, {"state": "sent"})]
