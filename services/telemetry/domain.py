"""Heartbeat rules per dialect: what a body must hold, which values are flagged, and the event (pure)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from libs.events.heartbeat_rules import (
    ABSURD,
    BOOT_RE,
    MAX_METRICS,
    MAX_SEQ,
    NAME_RE,
    agent_metrics_problem,
    out_of_range,
    sent_at_problem,
    status_problem,
)
from libs.events.heartbeat_rules import is_number as _is_number
from libs.events.schemas.telemetry import HeartbeatReceived, MetricValue

MAX_BATCH = 500
MAX_TEXT = 1000
K_PERCENT = ("cpu_percent", "memory_percent", "disk_percent", "error_rate")
K_COUNTS = ("transaction_count", "active_connections")


class InvalidHeartbeat(ValueError):
    """A body that is refused with ``status`` (400 unless said otherwise); ``code`` is machine-readable."""

    def __init__(self, message: str, code: str = "VALIDATION_ERROR", status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


@dataclass(frozen=True)
class Beat:
    """A valid heartbeat of any dialect, before it is attributed to a device."""

    status: str
    metrics: dict[str, MetricValue]
    dialect: str
    flags: list[str] = field(default_factory=list)
    seq: int | None = None
    sent_at: datetime | None = None
    backfill: bool = False
    boot: str | None = None


def _obj(body: Any, what: str = "body") -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidHeartbeat(f"{what} must be a JSON object")
    return body


def _name(name: str, where: str) -> str:
    if not NAME_RE.match(name):
        raise InvalidHeartbeat(f"{where}: metric name {name[:40]!r} must match {NAME_RE.pattern}")
    return name


def _status(body: dict[str, Any], *, required: bool) -> str:
    status = body.get("status")
    if status is None and not required:
        return "online"
    problem = status_problem(status)
    if problem is not None or not isinstance(status, str):
        raise InvalidHeartbeat(problem or "status must be a string")
    return status


def parse_s(body: Any) -> Beat:
    """Dialect S: ``status`` required; metric values stored as sent, odd ones flagged."""
    b = _obj(body)
    status = _status(b, required=True)
    raw = b.get("metrics", {})
    metrics = _obj(raw, "metrics")
    if len(metrics) > MAX_METRICS:
        raise InvalidHeartbeat(f"metrics: at most {MAX_METRICS} entries")
    stored: dict[str, MetricValue] = {}
    flags: list[str] = []
    for name, value in metrics.items():
        _name(name, "metrics")
        if _is_number(value):
            stored[name] = value
            if out_of_range(name, float(value)):
                flags.append(name)
        elif isinstance(value, str | bool) or value is None:
            stored[name] = value[:MAX_TEXT] if isinstance(value, str) else value
            flags.append(name)
        else:  # objects and arrays are kept as their JSON text
            stored[name] = json.dumps(value, separators=(",", ":"))[:MAX_TEXT]
            flags.append(name)
    return Beat(status=status, metrics=stored, dialect="s", flags=flags)


def _finite(name: str, value: Any, lo: float, hi: float) -> float:
    if not _is_number(value) or not math.isfinite(float(value)):
        raise InvalidHeartbeat(f"{name} must be a finite number")
    if not lo <= value <= hi:
        raise InvalidHeartbeat(f"{name} must be between {lo:g} and {hi:g}")
    return value


def _count(name: str, value: Any) -> int:
    # Some clients' JSON writes every number as a float: a whole 3.0 is the count 3 (3.5 is not).
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SEQ:
        raise InvalidHeartbeat(f"{name} must be a non-negative integer")
    return value


def parse_k(body: Any, device_id: str) -> Beat:
    """Dialect K metrics: strictly typed and ranged; a body for another device is refused."""
    b = _obj(body)
    claimed = b.get("device_id")
    if claimed is not None and not isinstance(claimed, str):
        raise InvalidHeartbeat("device_id must be a string")
    if claimed is not None and claimed != device_id:
        raise InvalidHeartbeat("device_id does not match the authenticated device", "DEVICE_MISMATCH", 403)
    metrics: dict[str, MetricValue] = {}
    for name in K_PERCENT:
        if b.get(name) is not None:
            metrics[name] = _finite(name, b[name], 0, 100)
    for name in K_COUNTS:
        if b.get(name) is not None:
            metrics[name] = _count(name, b[name])
    if b.get("network_latency_ms") is not None:
        metrics["network_latency_ms"] = _finite("network_latency_ms", b["network_latency_ms"], 0, 1e7 - 1e-9)
    if b.get("transaction_volume") is not None:
        metrics["transaction_volume"] = _finite("transaction_volume", b["transaction_volume"], 0, ABSURD)
    extra = _obj(b.get("extra_metrics") or {}, "extra_metrics")
    if len(extra) > MAX_METRICS:
        raise InvalidHeartbeat(f"extra_metrics: at most {MAX_METRICS} entries")
    for name, value in extra.items():
        _name(name, "extra_metrics")
        if _is_number(value):
            value = _finite(f"extra_metrics.{name}", value, -ABSURD, ABSURD)
        elif isinstance(value, str):
            if len(value) > MAX_TEXT:
                raise InvalidHeartbeat(f"extra_metrics.{name}: at most {MAX_TEXT} characters")
        elif not isinstance(value, bool):
            raise InvalidHeartbeat(f"extra_metrics.{name} must be a number, string or boolean")
        metrics[f"extra.{name}"] = value
    return Beat(status="online", metrics=metrics, dialect="k")


def _sent_at(value: Any, now: datetime | None) -> datetime:
    if not isinstance(value, str) or len(value) > 64:
        raise InvalidHeartbeat("sent_at must be an ISO 8601 time")
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidHeartbeat("sent_at must be an ISO 8601 time") from None
    at = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    problem = sent_at_problem(at, now)
    if problem is not None:
        raise InvalidHeartbeat(problem)
    return at


def _boot(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not BOOT_RE.match(value):
        # 422 is the agent protocol's answer for this field; the body's other rules answer 400
        raise InvalidHeartbeat(f"{where}boot must match {BOOT_RE.pattern}", status=422)
    return value


def parse_agent(body: Any, *, now: datetime | None = None, backfill: bool = False, where: str = "") -> Beat:
    """The agent protocol: ``seq`` and ``sent_at`` required; metrics are finite, sane numbers."""
    b = _obj(body, where or "body")
    seq = b.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= MAX_SEQ:
        raise InvalidHeartbeat(f"{where}seq must be a non-negative integer")
    sent_at = _sent_at(b.get("sent_at"), now)
    status = _status(b, required=False)
    metrics = _obj(b.get("metrics", {}), f"{where}metrics")
    problem = agent_metrics_problem(metrics, where)
    if problem is not None:
        raise InvalidHeartbeat(problem)
    boot = _boot(b.get("boot"), where)
    return Beat(status, dict(metrics), "agent", seq=seq, sent_at=sent_at, backfill=backfill, boot=boot)


def parse_agent_batch(body: Any, *, now: datetime | None = None) -> list[Beat]:
    """A backfill batch ``{heartbeats: [...]}`` of 1..500 agent heartbeats; one bad item refuses all."""
    items = _obj(body).get("heartbeats")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
        raise InvalidHeartbeat(f"heartbeats must be a list of 1 to {MAX_BATCH} heartbeats")
    return [
        parse_agent(item, now=now, backfill=True, where=f"heartbeats[{i}].") for i, item in enumerate(items)
    ]


def heartbeat_event(beat: Beat, device_id: str, workspace_id: str, *, now: datetime) -> HeartbeatReceived:
    """The fact to publish for an accepted heartbeat."""
    return HeartbeatReceived(
        device_id=device_id,
        workspace_id=workspace_id,
        received_at=now,
        status=beat.status,
        seq=beat.seq,
        sent_at=beat.sent_at,
        boot=beat.boot,
        metrics=beat.metrics,
        backfill=beat.backfill,
        dialect=beat.dialect,
        flags=beat.flags,
    )


# event id, device, workspace, time, seq, sent_at, status, metrics (JSON text), backfill
PointRow = tuple[str, str, str, datetime, int | None, datetime | None, str, str, bool]


def chart_points(event: HeartbeatReceived) -> dict[str, float]:
    """The metrics of a heartbeat that belong on a chart: numeric, finite, plausible, not flagged."""
    flagged = set(event.flags)
    points: dict[str, float] = {}
    for name, value in event.metrics.items():
        if not isinstance(value, int | float) or isinstance(value, bool) or name in flagged:
            continue
        if not out_of_range(name, float(value)):
            points[name] = float(value)
    return points


def point_time(event: HeartbeatReceived) -> datetime:
    """When a heartbeat's readings were taken: the agent's send time for backfill, else receipt."""
    return event.sent_at if event.backfill and event.sent_at is not None else event.received_at


def reading_time(event: HeartbeatReceived) -> datetime:
    """When a heartbeat's readings were taken, to order the latest-metrics cache: the agent's send
    time (a retry or a late delivery is older than what followed it), else the receive time."""
    return event.sent_at if event.sent_at is not None else event.received_at


def point_row(event_id: str, event: HeartbeatReceived) -> PointRow:
    """The time-series row of one heartbeat."""
    return (
        event_id,
        event.device_id,
        event.workspace_id,
        point_time(event),
        event.seq,
        event.sent_at,
        event.status,
        json.dumps(chart_points(event), separators=(",", ":")),
        event.backfill,
    )


STEPS = ("raw", "1m", "1h")
AGGS = ("avg", "min", "max")
MAX_POINTS = 10_000  # per metric
# Raw rows are read whole within the window (the limit is applied per metric after), so the window
# is what bounds the work of a raw query; longer spans are what the rollups are for.
MAX_RAW_SPAN = timedelta(hours=24)


@dataclass(frozen=True)
class ChartQuery:
    """A validated ``GET /api/v1/devices/{id}/metrics`` query."""

    start: datetime
    end: datetime
    step: str
    agg: str
    name: str | None
    limit: int


def _when(value: str | None, default: datetime, what: str) -> datetime:
    if value is None or value == "":
        return default
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "+"))
        at = (at if at.tzinfo is not None else at.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidHeartbeat(f"{what} must be an ISO 8601 time") from None
    if not 2000 <= at.year <= 9000:  # keeps every span computed from it in range
        raise InvalidHeartbeat(f"{what} must be between the years 2000 and 9000")
    return at


def chart_query(
    params: dict[str, str],
    *,
    now: datetime,
    default_span_s: float = 3600,
    limit: int = MAX_POINTS,
    raw_max_span: timedelta = MAX_RAW_SPAN,
) -> ChartQuery:
    """Parse ``from``, ``to`` (ISO; default the last hour), ``step``, ``agg`` and ``name``."""

    end = _when(params.get("to"), now, "to")
    start = _when(params.get("from"), end - timedelta(seconds=default_span_s), "from")
    if start >= end:
        raise InvalidHeartbeat("from must be before to")
    step, agg = params.get("step", "raw"), params.get("agg", "avg")
    if step not in STEPS:
        raise InvalidHeartbeat(f"step must be one of {', '.join(STEPS)}")
    if step == "raw" and end - start > raw_max_span:
        hours = f"{raw_max_span / timedelta(hours=1):g} hours"
        raise InvalidHeartbeat(
            f"a raw chart may cover at most {hours} (asked: {(end - start) / timedelta(hours=1):.4g} hours); "
            "use step=1m or step=1h for a longer span",
            "SPAN_TOO_LONG",
            422,
        )
    if agg not in AGGS:
        raise InvalidHeartbeat(f"agg must be one of {', '.join(AGGS)}")
    name = params.get("name") or None
    if name is not None:
        _name(name, "name")
    return ChartQuery(start, end, step, agg, name, limit)


class DeviceRateLimit:
    """At most ``limit`` events per key (a device, a client address) per fixed window, counted in this
    process (0: no limit).

    A cheap first line (no Redis round trip per request): with N replicas a device may reach N times
    the limit, which still stops a runaway client.
    """

    def __init__(self, limit: int, window_s: float = 1.0) -> None:
        self.limit, self.window_s = limit, window_s
        self._window = -1
        self._counts: dict[str, int] = {}

    def allow(self, key: str, now: float) -> bool:
        """Count one heartbeat of ``key``; False when its window is already full."""
        if self.limit <= 0:
            return True
        window = int(now // self.window_s)
        if window != self._window:  # a new window forgets every device of the last one
            self._window, self._counts = window, {}
        n = self._counts.get(key, 0) + 1
        self._counts[key] = n
        return n <= self.limit
