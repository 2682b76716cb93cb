"""Presence, pure: online / late / offline from heartbeats, connections and deadlines (no I/O, no clock).

The state is folded from signals in log order; deadlines are derived from each accepted heartbeat's
``received_at``, so the live consumer, a restarted one and a rebuild reach the same state. A
transition dated before ``quiet_before`` (a rebuild's time) is applied but not reported: the live
system reported it when it happened.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import msgspec

_replace = msgspec.structs.replace
ONLINE, LATE, OFFLINE = "online", "late", "offline"
NEVER_SEEN = "never_seen"
FIRST_HEARTBEAT = "first_heartbeat"
HEARTBEAT_RESUMED = "heartbeat_resumed"
HEARTBEAT_MISSED = "heartbeat_missed"
HEARTBEAT_TIMEOUT = "heartbeat_timeout"
SOCKET_CLOSED = "socket_closed"
AGENT_SHUTDOWN = "agent_shutdown"
DEFAULT_INTERVAL_S = 30.0
DEFAULT_TIMEOUT_S = 90.0
MAX_TIMING_S = 86_400


class Timing(msgspec.Struct, frozen=True):
    """A device's heartbeat interval and timeout; late after interval + grace (half an interval)."""

    interval_s: float = DEFAULT_INTERVAL_S
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def late_after(self) -> timedelta:
        """Silence after which a device is late (never past its timeout)."""
        return timedelta(seconds=min(self.interval_s * 1.5, self.timeout_s))

    @property
    def timeout(self) -> timedelta:
        """Silence after which a device is offline."""
        return timedelta(seconds=self.timeout_s)

    @property
    def flap_window(self) -> timedelta:
        """A second ``late`` within this time of the previous one is not reported (damping)."""
        return timedelta(seconds=self.timeout_s)


def timing_from(*layers: dict[str, Any] | None) -> Timing:
    """The first valid ``heartbeat_interval_s``/``heartbeat_timeout_s`` of each layer, most specific first."""
    values: dict[str, float] = {}
    for layer in layers:
        for key in ("interval_s", "timeout_s"):
            raw = (layer or {}).get(f"heartbeat_{key}")
            ok = isinstance(raw, int | float) and not isinstance(raw, bool) and 0 < raw <= MAX_TIMING_S
            if key not in values and ok:
                values[key] = float(raw)  # type: ignore[arg-type]
    t = Timing(**values)
    return t if t.timeout_s >= t.interval_s else Timing(t.interval_s, t.interval_s)


class InvalidTiming(ValueError):
    """A heartbeat timing setting that cannot be used (the message says why)."""


def parse_timing(body: Any) -> tuple[float | None, float | None]:
    """``{"heartbeat_interval_s": n | null, "heartbeat_timeout_s": n | null}`` -> (interval, timeout).

    Both keys are required (null clears one: the service default applies); numbers in (0, 86400];
    a timeout shorter than the interval is refused rather than silently raised.
    """
    keys = ("heartbeat_interval_s", "heartbeat_timeout_s")
    if not isinstance(body, dict):
        raise InvalidTiming("expected a JSON object")
    if unknown := sorted(set(body) - set(keys)):
        raise InvalidTiming(f"unknown field {unknown[0]}")
    values: list[float | None] = []
    for key in keys:
        if key not in body:
            raise InvalidTiming(f"{key} is required (null for the default)")
        raw = body[key]
        if raw is None:
            values.append(None)
            continue
        if not isinstance(raw, int | float) or isinstance(raw, bool) or not 0 < raw <= MAX_TIMING_S:
            raise InvalidTiming(f"{key} must be a number of seconds in (0, {MAX_TIMING_S}] or null")
        values.append(float(raw))
    interval, timeout = values
    if interval is not None and timeout is not None and timeout < interval:
        raise InvalidTiming("heartbeat_timeout_s must not be shorter than heartbeat_interval_s")
    return interval, timeout


class Presence(msgspec.Struct, frozen=True, kw_only=True):
    """What presence keeps per device."""

    status: str = OFFLINE
    reason: str = NEVER_SEEN
    last_seen: datetime | None = None
    last_seq: int | None = None
    last_time: datetime | None = None  # sent_at (else received_at) of the last accepted heartbeat
    boot: str | None = None  # the agent run that sent the last accepted heartbeat
    late_at: datetime | None = None
    offline_at: datetime | None = None
    connected: bool = False
    connection_id: str | None = None  # the socket that made it connected
    gateway_id: str | None = None  # the gateway instance holding that socket
    last_late: datetime | None = None  # when the device last went late (reported)
    flap_window_s: float = DEFAULT_TIMEOUT_S
    quiet_before: datetime | None = None

    @property
    def next_at(self) -> datetime | None:
        """The earliest pending deadline (what the sweeper waits for)."""
        pending = [d for d in (self.late_at, self.offline_at) if d is not None]
        return min(pending) if pending else None


class Beat(msgspec.Struct, frozen=True):
    """A heartbeat (or metrics post); ``status == "offline"`` is a clean shutdown."""

    received_at: datetime
    status: str = ONLINE
    seq: int | None = None
    sent_at: datetime | None = None
    boot: str | None = None


class Connected(msgspec.Struct, frozen=True):
    """The agent opened a socket (on gateway ``gateway_id``)."""

    at: datetime
    connection_id: str = ""
    gateway_id: str = ""


class Disconnected(msgspec.Struct, frozen=True):
    """The agent's socket closed; ``reason`` is socket_closed or agent_shutdown."""

    at: datetime
    reason: str = SOCKET_CLOSED
    connection_id: str = ""


Signal = Beat | Connected | Disconnected


class Transition(msgspec.Struct, frozen=True):
    """A status change to report."""

    status: str
    previous: str
    reason: str
    at: datetime


def is_fresh(state: Presence, beat: Beat) -> bool:
    """Whether a heartbeat is newer than the last accepted one (duplicates and stragglers are not).

    Within one agent run (same ``boot``) by sequence number; a heartbeat of another run by time (a
    restarted agent counts from 0 again; a straggler of the previous run is older). Without boot
    ids, by sequence number while the device is not offline (an offline device may have restarted
    and reset its counter); otherwise by ``sent_at``, else ``received_at``.
    """
    when = beat.sent_at or beat.received_at
    if beat.boot is not None and state.boot is not None and beat.boot != state.boot:
        return state.last_time is None or when > state.last_time
    same_run = beat.boot is not None and beat.boot == state.boot
    if beat.seq is not None and state.last_seq is not None and (same_run or state.status != OFFLINE):
        return beat.seq > state.last_seq
    return state.last_time is None or when > state.last_time


def _move(
    state: Presence, status: str, reason: str, at: datetime, out: list[Transition], **changes: Any
) -> Presence:
    if status != state.status and (state.quiet_before is None or at >= state.quiet_before):
        out.append(Transition(status, state.status, reason, at))
    return _replace(state, status=status, reason=reason, **changes)


def advance(state: Presence, now: datetime, out: list[Transition]) -> Presence:
    """Apply the deadlines that passed by ``now`` (late, then offline), appending transitions."""
    if state.late_at is not None and state.late_at <= now and state.status == ONLINE:
        at = state.late_at
        damped = state.last_late is not None and at - state.last_late < timedelta(seconds=state.flap_window_s)
        if damped:  # the window counts from the last *reported* late, so it does not slide
            state = _replace(state, late_at=None)
        else:
            state = _move(state, LATE, HEARTBEAT_MISSED, at, out, late_at=None, last_late=at)
    if state.offline_at is not None and state.offline_at <= now and state.status != OFFLINE:
        state = _move(state, OFFLINE, HEARTBEAT_TIMEOUT, state.offline_at, out, late_at=None, offline_at=None)
    return state


def _alive(state: Presence, at: datetime, out: list[Transition], **changes: Any) -> Presence:
    reason = FIRST_HEARTBEAT if state.last_seen is None else HEARTBEAT_RESUMED
    if state.status == ONLINE:
        return _replace(state, **changes)
    return _move(state, ONLINE, reason, at, out, **changes)


def observe(state: Presence, signal: Signal, timing: Timing, out: list[Transition]) -> Presence:
    """Fold one signal (after the deadlines it passed), appending the transitions it causes."""
    at = signal.received_at if isinstance(signal, Beat) else signal.at
    state = advance(state, at, out)
    if state.flap_window_s != timing.timeout_s:
        state = _replace(state, flap_window_s=timing.timeout_s)
    if isinstance(signal, Connected):
        seen_at = max(at, state.last_seen) if state.last_seen else at
        changes = {
            "connected": True,
            "connection_id": signal.connection_id or None,
            "gateway_id": signal.gateway_id or None,
            "last_seen": seen_at,
        }
        return _alive(state, at, out, **changes, late_at=None, offline_at=None)
    if isinstance(signal, Disconnected):
        if signal.connection_id and state.connection_id and signal.connection_id != state.connection_id:
            return state  # an older socket closed; the device holds a newer one
        if not state.connected and state.status == OFFLINE:
            return state
        reason = AGENT_SHUTDOWN if signal.reason == AGENT_SHUTDOWN else SOCKET_CLOSED
        changes = {
            "connected": False,
            "connection_id": None,
            "gateway_id": None,
            "late_at": None,
            "offline_at": None,
        }
        return _move(state, OFFLINE, reason, at, out, **changes)
    if not is_fresh(state, signal):
        return state
    seen = {"last_seen": at, "last_seq": signal.seq, "last_time": signal.sent_at or at, "boot": signal.boot}
    if signal.status == OFFLINE:
        return _move(state, OFFLINE, AGENT_SHUTDOWN, at, out, late_at=None, offline_at=None, **seen)
    if state.connected:
        return _alive(state, at, out, **seen)
    deadlines = {"late_at": at + timing.late_after, "offline_at": at + timing.timeout}
    return _alive(state, at, out, **seen, **deadlines)


def fold(state: Presence, signals: list[Signal], timing: Timing) -> tuple[Presence, list[Transition]]:
    """Fold signals in order; returns the new state and the transitions to report."""
    out: list[Transition] = []
    for signal in signals:
        state = observe(state, signal, timing, out)
    return state, out
