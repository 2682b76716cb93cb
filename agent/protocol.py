"""The agent's sans-I/O core: events in, actions out (the model is ``websockets``' protocol layer).

No sockets, no sleeps, no clock and no randomness of its own: every event carries ``now`` (monotonic
seconds), ``Tick`` and ``ShutdownRequested`` carry the wall-clock time for ``sent_at``, and the jitter
comes from the ``random.Random`` the caller passes in. The caller (``agent.runner``, or the fleet
simulator for many agents) performs the actions, feeds their outcomes back as events, and calls
``receive(Tick(...))`` at ``next_wakeup()``. The event and action types are in ``agent.events``.

Decisions made here: authentication and re-authentication before the session expires (there is no
refresh endpoint), reconnects with exponential backoff and full jitter (reset after a stable
connection), heartbeats over the socket or over HTTP while it is down, the interval the server asks
for, sampling heartbeats into the spool while the server is unreachable and replaying the spool in
batches afterwards, command dedup by ``command_id`` (a command is recorded as interrupted before it
runs, so one cut short by a stop or a crash is reported, never run again), result resends, and the
clean shutdown.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum

from agent.events import (
    Action,
    Authenticate,
    AuthFailed,
    AuthSucceeded,
    BatchAnswered,
    BatchFailed,
    CloseSocket,
    CommandFinished,
    DropBatch,
    Event,
    Exit,
    FrameReceived,
    HeartbeatAnswered,
    HeartbeatFailed,
    Log,
    OpenSocket,
    PostBatch,
    PostHeartbeat,
    RecordResult,
    ResultDelivered,
    RunCommand,
    SendFrame,
    ShutdownRequested,
    SocketClosed,
    SocketOpened,
    SpoolHeartbeat,
    Started,
    Tick,
)
from libs.events.schemas.agent import (
    Ack,
    Bye,
    Command,
    Error,
    Heartbeat,
    HeartbeatAck,
    Hello,
    Result,
    ResultAck,
    ServerFrame,
    Welcome,
)

# The event and action types live in agent.events; they stay importable from here.
__all__ = [
    "BAD_BATCH",
    "MAX_CLOCK_SKEW",
    "MAX_UNACKED",
    "REJECTED",
    "Action",
    "AgentProtocol",
    "AuthFailed",
    "AuthSucceeded",
    "Authenticate",
    "BatchAnswered",
    "BatchFailed",
    "CloseSocket",
    "CommandFinished",
    "DropBatch",
    "Event",
    "Exit",
    "FrameReceived",
    "HeartbeatAnswered",
    "HeartbeatFailed",
    "Log",
    "OpenSocket",
    "PostBatch",
    "PostHeartbeat",
    "RecordResult",
    "ResultDelivered",
    "RunCommand",
    "SendFrame",
    "Settings",
    "ShutdownRequested",
    "SocketClosed",
    "SocketOpened",
    "SocketState",
    "SpoolHeartbeat",
    "Started",
    "Tick",
    "backoff_delay",
    "interrupted_result",
]

REJECTED = frozenset({400, 401, 403})  # auth answers that a retry cannot fix
BAD_BATCH = frozenset({400, 413, 422})  # the server will refuse this batch however often it is sent
MAX_CLOCK_SKEW = timedelta(minutes=5)  # beyond it, sent_at follows the server's clock
MAX_UNACKED = 16  # socket heartbeats kept for the spool until acknowledged


@dataclass(frozen=True)
class Settings:
    """Tunables of one agent (the server's ``heartbeat_interval_ms``/``nextHeartbeat`` win)."""

    heartbeat_interval_s: float = 30.0
    max_interval_s: float | None = None  # update_config: at most this, even if the server allows more
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0
    stable_after_s: float = 60.0
    offline_sample_every: int = 10
    batch_size: int = 500
    refresh_margin_s: float = 300.0
    http_only: bool = False
    max_executed: int = 1000
    agent_version: str = ""
    capabilities: tuple[str, ...] = ()


def backoff_delay(attempt: int, settings: Settings, rng: random.Random) -> float:
    """Full jitter: uniform in ``[0, min(cap, base * 2**attempt)]``."""
    ceiling = min(settings.backoff_cap_s, settings.backoff_base_s * 2.0 ** min(attempt, 60))
    return rng.uniform(0.0, ceiling)


class SocketState(Enum):
    """Where the agent socket is: DOWN, OPENING (handshake), OPEN (hello sent), READY (welcomed)."""

    DOWN = "disconnected"
    OPENING = "opening"
    OPEN = "open"
    READY = "connected"


class AgentProtocol:
    """One agent's connection state machine: ``receive(event) -> actions``."""

    def __init__(self, settings: Settings, *, boot: str, rng: random.Random) -> None:
        self.settings = settings
        self.boot = boot
        self.interval_s = settings.heartbeat_interval_s
        self._announced_s: float | None = None  # the server's interval, once it said one
        self._clock_offset = timedelta(0)  # added to sent_at when the local clock is far off
        self.socket = SocketState.DOWN
        self.authenticated = False
        self.stopping = False
        self.heartbeat_count = 0
        self.heartbeat_errors = 0
        self.last_heartbeat_at: float | None = None
        self.spooled = 0
        self._rng = rng
        self._next_seq = 0
        self._auth_pending = False
        self._auth_attempts = 0
        self._rejections = 0
        self._reauthed = False
        self._socket_attempts = 0
        self._ready_since: float | None = None
        self._expires_at: float | None = None
        self._refresh_at: float | None = None
        self._auth_retry_at: float | None = None
        self._reconnect_at: float | None = None
        self._heartbeat_at: float | None = None
        self._batch_retry_at: float | None = None
        self._batch_in_flight = False
        self._missed = 0
        self._http_in_flight: dict[int, Heartbeat] = {}
        self._ws_unacked: dict[int, Heartbeat] = {}
        self._running: set[str] = set()
        self._executed: dict[str, Result] = {}
        self._pending: dict[str, Result] = {}
        self._set_interval(None)

    # --- queries ------------------------------------------------------------------------------

    def next_wakeup(self) -> float | None:
        """When the caller must send the next ``Tick`` (``None``: only events can wake us)."""
        if self.stopping:
            return None
        timers = (
            self._heartbeat_at,
            self._reconnect_at,
            self._auth_retry_at,
            self._refresh_at,
            self._batch_retry_at,
            self._expires_at,
        )
        return min((t for t in timers if t is not None), default=None)

    def heartbeat_due(self, now: float) -> bool:
        """Whether the next Tick sends a heartbeat (so the caller samples metrics only then)."""
        return not self.stopping and self._heartbeat_at is not None and now >= self._heartbeat_at

    def is_healthy(self, now: float) -> bool:
        """Authenticated and a heartbeat was stored within three intervals."""
        last = self.last_heartbeat_at
        return self.authenticated and last is not None and now - last <= 3 * self.interval_s

    def executed_result(self, command_id: str) -> Result | None:
        """The stored result of an executed command (for tests and the simulator)."""
        return self._executed.get(command_id)

    def pending_results(self) -> list[Result]:
        """Results not yet acknowledged by the server, oldest first."""
        return list(self._pending.values())

    def reconfigure(self, settings: Settings) -> None:
        """Adopt new local settings (``update_config``) at once."""
        self.settings = settings
        self._set_interval(self._announced_s)

    # --- the one entry point ------------------------------------------------------------------

    def receive(self, event: Event) -> list[Action]:
        """Feed one event; returns what to do, in order."""
        match event:
            case Started():
                return self._started(event)
            case AuthSucceeded():
                return self._auth_succeeded(event)
            case AuthFailed():
                return self._auth_failed(event)
            case SocketOpened():
                self.socket = SocketState.OPEN
                version, capabilities = self.settings.agent_version, list(self.settings.capabilities)
                return [SendFrame(Hello(boot=self.boot, agent_version=version, capabilities=capabilities))]
            case SocketClosed():
                return self._socket_closed(event)
            case FrameReceived(frame=Welcome() as welcome):
                return self._check_clock(event.wall, welcome.server_time) + self._welcome(event.now, welcome)
            case FrameReceived():
                return self._frame(event.now, event.frame)
            case HeartbeatAnswered():
                return self._heartbeat_answered(event)
            case HeartbeatFailed():
                return self._heartbeat_failed(event)
            case BatchAnswered():
                return self._batch_answered(event)
            case BatchFailed():
                return self._batch_failed(event)
            case CommandFinished():
                return self._command_finished(event.result)
            case Tick():
                return self._tick(event)
            case ShutdownRequested():
                return self._shutdown(event)
        raise TypeError(f"not an agent event: {event!r}")

    # --- handlers -----------------------------------------------------------------------------

    def _started(self, ev: Started) -> list[Action]:
        for command_id, result in ev.executed.items():
            self._remember(command_id, result)
        self._pending = {r.command_id: r for r in ev.pending_results}
        self.spooled = ev.spooled
        # Unreachable from the start: the first heartbeat is still sampled into the spool on time.
        self._heartbeat_at = ev.now + self.interval_s
        return self._authenticate()

    def _auth_succeeded(self, ev: AuthSucceeded) -> list[Action]:
        self._auth_pending = False
        self.authenticated = True
        self._auth_attempts = 0
        self._rejections = 0
        ttl = max(ev.expires_in_s, 1.0)
        self._expires_at = ev.now + ttl
        self._refresh_at = ev.now + ttl - min(self.settings.refresh_margin_s, ttl * 0.1)
        if self.settings.http_only:
            if self.heartbeat_count == 0:
                self._heartbeat_at = ev.now
            return self._replay()
        if self.socket is SocketState.DOWN and self._reconnect_at is None:
            self.socket = SocketState.OPENING
            return [OpenSocket()]
        return []

    def _auth_failed(self, ev: AuthFailed) -> list[Action]:
        self._auth_pending = False
        if ev.status in REJECTED:
            self._rejections += 1
            if self._rejections >= 2:
                self.stopping = True
                return [Exit(1, _rejection_message(ev.status))]
        delay = backoff_delay(self._auth_attempts, self.settings, self._rng)
        self._auth_attempts += 1
        if ev.status == 429 and ev.retry_after_s is not None:
            delay = max(delay, ev.retry_after_s)
        self._auth_retry_at = ev.now + delay
        why = "no answer" if ev.status is None else f"HTTP {ev.status}"
        return [Log("warning", f"authentication failed ({why}); retrying in {delay:.1f} s")]

    def _socket_closed(self, ev: SocketClosed) -> list[Action]:
        was_ready = self.socket is SocketState.READY
        stable = self._ready_since is not None and ev.now - self._ready_since >= self.settings.stable_after_s
        if stable:
            self._socket_attempts = 0
        self.socket = SocketState.DOWN
        self._ready_since = None
        actions: list[Action] = []
        # Heartbeats written to the socket but never acknowledged may be lost: keep them for backfill.
        for hb in self._ws_unacked.values():
            actions.append(SpoolHeartbeat(hb, self.boot))
            self.spooled += 1
        self._ws_unacked.clear()
        if self.stopping:
            return actions
        if self.heartbeat_count == 0 and not was_ready:
            self._heartbeat_at = ev.now  # never seen yet: say so over HTTP at once
        if ev.handshake_status in (401, 403):
            return actions + self._token_rejected(ev.now)
        delay = backoff_delay(self._socket_attempts, self.settings, self._rng)
        self._socket_attempts += 1
        self._reconnect_at = ev.now + delay
        actions.append(Log("info", f"agent socket closed ({ev.code}); reconnecting in {delay:.1f} s"))
        return actions

    def _frame(self, now: float, frame: ServerFrame) -> list[Action]:
        match frame:
            case Command():
                return self._command(frame)
            case HeartbeatAck():
                return self._heartbeat_acked(now, frame.seq)
            case ResultAck():
                self._pending.pop(frame.command_id, None)
                return [ResultDelivered(frame.command_id)]
            case Error():
                if "heartbeat" in frame.code:
                    self.heartbeat_errors += 1
                return [Log("warning", f"server refused a frame: {frame.code}: {frame.message}")]
        return []

    def _welcome(self, now: float, frame: Welcome) -> list[Action]:
        self.socket = SocketState.READY
        self._ready_since = now
        self._reauthed = False
        if frame.heartbeat_interval_ms > 0:
            self._set_interval(frame.heartbeat_interval_ms / 1000.0)
        self._heartbeat_at = now  # a fresh socket announces itself with a heartbeat at once
        actions: list[Action] = [SendFrame(r) for r in self._pending.values()]
        return actions + self._replay()

    def _command(self, frame: Command) -> list[Action]:
        if self.stopping:
            return []  # unacknowledged, so the server delivers it to the next run instead
        command_id = frame.command_id
        actions: list[Action] = [SendFrame(Ack(command_id=command_id))]
        done = self._executed.get(command_id)
        if done is not None:
            actions.append(SendFrame(done))  # a redelivery: acknowledge and resend, never run twice
        elif command_id not in self._running:
            self._running.add(command_id)
            # Recorded before it runs: if the agent stops (or dies) meanwhile, the next run answers the
            # redelivery with this instead of running the command a second time.
            actions += [RecordResult(interrupted_result(command_id)), RunCommand(frame)]
        return actions

    def _heartbeat_acked(self, now: float, seq: int) -> list[Action]:
        if self._ws_unacked.pop(seq, None) is not None:
            self._stored(now)
        # Acks come in order: an older heartbeat still waiting was refused, and will never be acked.
        for older in [s for s in self._ws_unacked if s < seq]:
            del self._ws_unacked[older]
        return []

    def _heartbeat_answered(self, ev: HeartbeatAnswered) -> list[Action]:
        self._http_in_flight.pop(ev.seq, None)
        self._stored(ev.now)
        self._reauthed = False
        if ev.next_heartbeat_ms is not None and ev.next_heartbeat_ms > 0:
            self._set_interval(ev.next_heartbeat_ms / 1000.0)
            if self._heartbeat_at is not None:
                self._heartbeat_at = min(self._heartbeat_at, ev.now + self.interval_s)
        return self._replay()

    def _heartbeat_failed(self, ev: HeartbeatFailed) -> list[Action]:
        hb = self._http_in_flight.pop(ev.seq, None)
        self.heartbeat_errors += 1
        if ev.status in (400, 413, 422, 429):
            return [Log("warning", f"heartbeat {ev.seq} refused (HTTP {ev.status}); dropped")]
        kept = self._offline(hb) if hb is not None else []
        if ev.status == 401:
            return kept + self._token_rejected(ev.now)
        return kept

    def _batch_answered(self, ev: BatchAnswered) -> list[Action]:
        self._batch_in_flight = False
        self._reauthed = False
        self.spooled = max(ev.remaining, 0)
        return self._replay()

    def _batch_failed(self, ev: BatchFailed) -> list[Action]:
        self._batch_in_flight = False
        if ev.status == 401:
            return self._token_rejected(ev.now)
        if ev.status in BAD_BATCH:
            # Resending cannot succeed: drop it (counted by the spool) and go on with the rest.
            self._batch_in_flight = True
            msg = f"backfill batch refused (HTTP {ev.status}); dropped"
            return [Log("warning", msg), DropBatch(), PostBatch(self.settings.batch_size)]
        # 503/504/no answer: the batch may be partly written; resend it later (consumers dedup).
        self._batch_retry_at = ev.now + self.interval_s
        return []

    def _command_finished(self, result: Result) -> list[Action]:
        self._running.discard(result.command_id)
        self._remember(result.command_id, result)
        self._pending[result.command_id] = result
        actions: list[Action] = [RecordResult(result)]
        if self.socket is SocketState.READY:
            actions.append(SendFrame(result))
        return actions

    def _tick(self, ev: Tick) -> list[Action]:
        if self.stopping:
            return []
        now = ev.now
        actions: list[Action] = []
        if self._expires_at is not None and now >= self._expires_at:
            self.authenticated, self._expires_at = False, None
        if _due(self._auth_retry_at, now) or _due(self._refresh_at, now):
            self._auth_retry_at = self._refresh_at = None
            actions += self._authenticate()
        if _due(self._reconnect_at, now):
            self._reconnect_at = None
            actions += self._connect()
        if self.heartbeat_due(now):
            actions += self._heartbeat(ev)
        if _due(self._batch_retry_at, now):
            self._batch_retry_at = None
            actions += self._replay()
        return actions

    def _shutdown(self, ev: ShutdownRequested) -> list[Action]:
        if self.stopping:
            return []
        self.stopping = True
        actions: list[Action] = []
        if self.socket is SocketState.READY:
            actions += [SendFrame(Bye()), CloseSocket(1000)]
        else:
            if self.socket is not SocketState.DOWN:
                actions.append(CloseSocket(1000))
            if self.authenticated:
                hb = self._new_heartbeat(ev.wall, ev.metrics, status="offline")
                actions.append(PostHeartbeat(hb, self.boot, final=True))
        return [*actions, Exit(0, "stopped")]

    # --- helpers ------------------------------------------------------------------------------

    def _set_interval(self, announced_s: float | None) -> None:
        """The server's interval wins over the local default; a local maximum only makes it shorter.

        Presence is judged against the server's interval, so beating more slowly than it asks would
        make the device look late: ``max_interval_s`` can only speed heartbeats up.
        """
        self._announced_s = announced_s
        interval = self.settings.heartbeat_interval_s if announced_s is None else announced_s
        cap = self.settings.max_interval_s
        self.interval_s = interval if cap is None else min(interval, cap)

    def _authenticate(self) -> list[Action]:
        if self._auth_pending:
            return []
        self._auth_pending = True
        return [Authenticate()]

    def _connect(self) -> list[Action]:
        if self.settings.http_only or self.socket is not SocketState.DOWN:
            return []
        if not self.authenticated:
            return self._authenticate()  # the socket opens when auth succeeds
        self.socket = SocketState.OPENING
        return [OpenSocket()]

    def _token_rejected(self, now: float) -> list[Action]:
        """401 with a token: re-authenticate at once the first time, then only after a backoff."""
        self.authenticated = False
        if not self._reauthed:
            self._reauthed = True
            return [Log("info", "the session was refused; authenticating again"), *self._authenticate()]
        delay = backoff_delay(self._auth_attempts, self.settings, self._rng)
        self._auth_attempts += 1
        self._auth_retry_at = now + delay
        return [Log("warning", f"a fresh session was refused; authenticating again in {delay:.1f} s")]

    def _heartbeat(self, ev: Tick) -> list[Action]:
        hb = self._new_heartbeat(ev.wall, ev.metrics)
        self._heartbeat_at = ev.now + self.interval_s
        if self.socket is SocketState.READY:
            self._ws_unacked[hb.seq] = hb
            while len(self._ws_unacked) > MAX_UNACKED:  # a server that never acks must not grow this
                del self._ws_unacked[next(iter(self._ws_unacked))]
            return [SendFrame(hb)]
        if self.authenticated and not self._http_in_flight:
            self._http_in_flight[hb.seq] = hb
            return [PostHeartbeat(hb, self.boot)]
        return self._offline(hb)

    def _new_heartbeat(
        self, wall: datetime, metrics: Mapping[str, float], status: str = "online"
    ) -> Heartbeat:
        seq = self._next_seq
        self._next_seq += 1
        sent_at = wall + self._clock_offset
        return Heartbeat(seq=seq, sent_at=sent_at, status=status, metrics=dict(metrics))

    def _check_clock(self, wall: datetime | None, server_time: datetime) -> list[Action]:
        """A device without a real-time clock may boot far in the past: borrow the server's time."""
        if wall is None:
            return []
        server = server_time if server_time.tzinfo else server_time.replace(tzinfo=UTC)
        skew = server - wall
        self._clock_offset = skew if abs(skew) > MAX_CLOCK_SKEW else timedelta(0)
        if not self._clock_offset:
            return []
        off = skew.total_seconds()
        return [Log("warning", f"the local clock is {off:.0f} s off the server's; sent_at uses the server's")]

    def _offline(self, hb: Heartbeat) -> list[Action]:
        """Unreachable: keep one heartbeat in every ``offline_sample_every`` for backfill."""
        keep = self._missed % max(1, self.settings.offline_sample_every) == 0
        self._missed += 1
        if not keep:
            return []
        self.spooled += 1
        return [SpoolHeartbeat(hb, self.boot)]

    def _stored(self, now: float) -> None:
        self.heartbeat_count += 1
        self.last_heartbeat_at = now
        self._missed = 0

    def _replay(self) -> list[Action]:
        if self._batch_in_flight or self.spooled <= 0 or not self.authenticated or self.stopping:
            return []
        self._batch_in_flight = True
        return [PostBatch(self.settings.batch_size)]

    def _remember(self, command_id: str, result: Result) -> None:
        self._executed.pop(command_id, None)
        self._executed[command_id] = result
        while len(self._executed) > self.settings.max_executed:
            del self._executed[next(iter(self._executed))]


def interrupted_result(command_id: str) -> Result:
    """What a command that was running when the agent stopped is reported as (it is never run again)."""
    error = "interrupted: the agent stopped while this command ran; it was not run again"
    return Result(command_id=command_id, status="failed", error=error)


def _due(at: float | None, now: float) -> bool:
    return at is not None and now >= at


def _rejection_message(status: int | None) -> str:
    if status == 403:
        return "the server refused this device (HTTP 403: disabled); giving up"
    if status == 400:
        return "the server refused the authentication request (HTTP 400); check the device id"
    return "device credentials rejected (HTTP 401 INVALID_CREDENTIALS): check the device id and secret"
