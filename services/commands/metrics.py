"""OpenTelemetry instruments of the command queue: lifecycle steps counted, the open backlog gauged."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from opentelemetry import metrics
from prometheus_client import Counter

from libs.events import metrics as prometheus
from libs.events.schemas import Event
from libs.events.schemas.base import tag_of
from libs.events.schemas.commands import CommandFinished

# The open backlog per state, as the sweeper last counted it (an observable gauge reads it).
backlog: dict[str, int] = {}
_instruments: dict[str, Any] = {}
OPEN_STATES = ("queued", "sent", "delivered")
_transitions = Counter(
    "fleet_commands_transitions",
    "command lifecycle steps committed (queued, sent, delivered, finished...), finished ones by status",
    ("step", "status"),
    registry=prometheus.REGISTRY,
)


def set_backlog(counts: dict[str, int]) -> None:
    """The open backlog per state, as just counted (for the gauges)."""
    backlog.clear()
    backlog.update({state: counts.get(state, 0) for state in OPEN_STATES})
    prometheus.gauge(
        "fleet_commands_open",
        "open commands per state",
        ("state",),
        lambda: [({"state": st}, float(n)) for st, n in list(backlog.items())],
    )


def _observe(_options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
    for state, n in list(backlog.items()):
        yield metrics.Observation(n, {"state": state})


def _counter() -> Any:
    if not _instruments:
        meter = metrics.get_meter("fleet.commands")
        _instruments["steps"] = meter.create_counter(
            "fleet.commands.transitions", description="lifecycle steps (queued, sent, expired...)"
        )
        _instruments["open"] = meter.create_observable_gauge(
            "fleet.commands.open", callbacks=[_observe], description="open commands per state"
        )
    return _instruments["steps"]


def count(events: Sequence[Event]) -> None:
    """Count committed lifecycle events by step (``command.sent.v1`` -> ``sent``)."""
    counter = _counter()
    for e in events:
        name = tag_of(type(e)).removeprefix("command.").removesuffix(".v1")
        attrs = {"step": name}
        if isinstance(e, CommandFinished):
            attrs["status"] = e.status
        counter.add(1, attrs)
        _transitions.labels(name, attrs.get("status", "")).inc()
