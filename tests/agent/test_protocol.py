"""The agent's sans-I/O core: events in, actions out. No sockets, no sleeps, no clock."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from agent.protocol import (
    AgentProtocol,
    Authenticate,
    AuthFailed,
    AuthSucceeded,
    BatchAnswered,
    BatchFailed,
    CloseSocket,
    CommandFinished,
    DropBatch,
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
    Settings,
    ShutdownRequested,
    SocketClosed,
    SocketOpened,
    SocketState,
    SpoolHeartbeat,
    Started,
    Tick,
    backoff_delay,
    interrupted_result,
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
    Welcome,
)

WALL = datetime(2026, 1, 1, tzinfo=UTC)


class MaxRng(random.Random):
    """Always the top of the jitter range, so the exponential ceiling is visible."""

    def uniform(self, a: float, b: float) -> float:
        return b


def make(rng: random.Random | None = None, **settings: object) -> AgentProtocol:
    return AgentProtocol(Settings(**settings), boot="boot-1", rng=rng or random.Random(1))  # type: ignore[arg-type]


def tick(p: AgentProtocol, now: float, **metrics: float) -> list[object]:
    return list(p.receive(Tick(now=now, wall=WALL, metrics=metrics)))


def welcome(now: float, interval_ms: int = 30_000) -> FrameReceived:
    frame = Welcome(device_id="d1", connection_id="c1", heartbeat_interval_ms=interval_ms, server_time=WALL)
    return FrameReceived(now=now, frame=frame)


def command(cid: str = "cmd-1") -> FrameReceived:
    frame = Command(command_id=cid, command_type="ping", created_at=WALL, expires_at=WALL)
    return FrameReceived(now=0, frame=frame)


def result(cid: str = "cmd-1") -> Result:
    return Result(command_id=cid, status="succeeded", result={"pong": 1})


def connected(now: float = 0.0, **settings: object) -> AgentProtocol:
    """A protocol that has authenticated, opened its socket and been welcomed."""
    p = make(**settings)
    p.receive(Started(now=now))
    p.receive(AuthSucceeded(now=now, expires_in_s=86400))
    p.receive(SocketOpened(now=now))
    p.receive(welcome(now))
    return p


def frames(actions: list[object]) -> list[object]:
    return [a.frame for a in actions if isinstance(a, SendFrame)]


# --- connecting ---------------------------------------------------------------------------------


def test_start_authenticates_then_opens_the_socket_and_says_hello() -> None:
    p = make(agent_version="1.2", capabilities=("ping",))
    assert p.receive(Started(now=0)) == [Authenticate()]
    assert p.receive(AuthSucceeded(now=0.1, expires_in_s=86400)) == [OpenSocket()]
    [hello] = frames(p.receive(SocketOpened(now=0.2)))
    assert hello == Hello(boot="boot-1", agent_version="1.2", capabilities=["ping"])


def test_welcome_adopts_the_interval_and_heartbeats_at_once_over_the_socket() -> None:
    p = connected()
    p.receive(welcome(1.0, interval_ms=5_000))
    assert p.interval_s == 5.0 and p.heartbeat_due(1.0)
    [hb] = frames(tick(p, 1.0, cpu=12.5))
    assert isinstance(hb, Heartbeat) and hb.metrics == {"cpu": 12.5} and hb.sent_at == WALL
    assert p.next_wakeup() == 6.0
    p.receive(FrameReceived(now=1.1, frame=HeartbeatAck(seq=hb.seq)))
    assert p.heartbeat_count == 1 and p.is_healthy(1.1)
    assert not p.is_healthy(1.1 + 3 * 5.0 + 0.1)


def test_seq_increases_across_socket_and_http_heartbeats() -> None:
    p = connected()
    seqs = [frames(tick(p, 0.0))[0].seq]  # type: ignore[attr-defined]
    p.receive(SocketClosed(now=1, code=1006))
    [post] = [a for a in tick(p, 30.0) if isinstance(a, PostHeartbeat)]
    assert post.boot == "boot-1"
    seqs.append(post.heartbeat.seq)
    p.receive(HeartbeatAnswered(now=30.1, seq=post.heartbeat.seq))
    assert next(a for a in tick(p, 60.0) if isinstance(a, PostHeartbeat)).heartbeat.seq > seqs[-1]
    assert seqs == sorted(seqs) and len(set(seqs)) == 2


# --- backoff ----------------------------------------------------------------------------------


def test_backoff_is_full_jitter_bounded_by_the_exponential_ceiling_and_the_cap() -> None:
    s = Settings(backoff_base_s=1.0, backoff_cap_s=20.0)
    rng = random.Random(42)
    for attempt in range(12):
        ceiling = min(20.0, 2.0**attempt)
        delays = [backoff_delay(attempt, s, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert min(delays) < ceiling * 0.2  # full jitter reaches down near zero
    assert backoff_delay(10_000, s, MaxRng()) == 20.0


def _reconnect_delays(p: AgentProtocol, start: float, n: int) -> list[float]:
    """Fail ``n`` reconnects in a row; the delay the protocol chose for each."""
    now, delays = start, []
    for _ in range(n):
        p.receive(SocketClosed(now=now, code=1006))
        wake = p._reconnect_at  # the schedule is what is under test
        assert wake is not None
        delays.append(wake - now)
        now = wake
        assert OpenSocket() in tick(p, now)
    return delays


def test_reconnects_back_off_exponentially_up_to_the_cap() -> None:
    p = make(MaxRng(), backoff_base_s=1.0, backoff_cap_s=10.0)
    p.receive(Started(now=0))
    p.receive(AuthSucceeded(now=0, expires_in_s=86400))
    assert _reconnect_delays(p, 0.0, 6) == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_backoff_resets_after_a_stable_connection_but_not_after_a_short_one() -> None:
    p = make(MaxRng(), backoff_base_s=1.0, backoff_cap_s=60.0, stable_after_s=30.0)
    p.receive(Started(now=0))
    p.receive(AuthSucceeded(now=0, expires_in_s=86400))
    now = _reconnect_delays(p, 0.0, 3)[-1] + 10  # delays 1, 2, 4
    p.receive(SocketOpened(now=now))
    p.receive(welcome(now))
    assert _reconnect_delays(p, now + 5, 1) == [8.0]  # 5 s is not stable
    p.receive(SocketOpened(now=100))
    p.receive(welcome(100))
    assert _reconnect_delays(p, 200, 1) == [1.0]  # 100 s is


# --- HTTP fallback, sampling, spool replay ----------------------------------------------------


def test_http_heartbeats_while_the_socket_is_down_adopt_next_heartbeat() -> None:
    p = connected()
    tick(p, 0)
    p.receive(SocketClosed(now=1, code=1006))
    [post] = [a for a in tick(p, 30) if isinstance(a, PostHeartbeat)]
    p.receive(HeartbeatAnswered(now=30.1, seq=post.heartbeat.seq, next_heartbeat_ms=10_000))
    assert p.interval_s == 10.0 and p.next_wakeup() is not None
    assert p.next_wakeup() <= 40.1  # type: ignore[operator]


def test_unreachable_server_spools_one_heartbeat_in_n_intervals() -> None:
    p = make(offline_sample_every=3, backoff_cap_s=1000.0)
    p.receive(Started(now=0))
    p.receive(AuthFailed(now=0.1))  # no answer at all
    spooled = []
    for i in range(1, 10):
        for a in tick(p, 30.0 * i):
            if isinstance(a, SpoolHeartbeat):
                spooled.append(a.heartbeat.seq)
    assert spooled == [0, 3, 6] and p.spooled == 3


def test_failed_http_heartbeats_are_sampled_into_the_spool_and_errors_counted() -> None:
    p = make(http_only=True, offline_sample_every=2)
    p.receive(Started(now=0))
    p.receive(AuthSucceeded(now=0, expires_in_s=86400))
    kept = []
    for i in range(6):
        [post] = tick(p, 30.0 * i)
        assert isinstance(post, PostHeartbeat)
        out = p.receive(HeartbeatFailed(now=30.0 * i + 0.5, seq=post.heartbeat.seq, status=503))
        kept += [a.heartbeat.seq for a in out if isinstance(a, SpoolHeartbeat)]
    assert kept == [0, 2, 4] and p.heartbeat_errors == 6


def test_the_spool_is_replayed_in_batches_one_at_a_time_after_reconnecting() -> None:
    p = make(batch_size=500)
    p.receive(Started(now=0, spooled=1200))
    p.receive(AuthSucceeded(now=0, expires_in_s=86400))
    p.receive(SocketOpened(now=0))
    assert p.receive(welcome(0)) == [PostBatch(500)]
    assert [a for a in tick(p, 0) if isinstance(a, PostBatch)] == []  # one batch in flight at a time
    assert p.receive(BatchAnswered(now=1, sent=500, remaining=700)) == [PostBatch(500)]
    assert p.receive(BatchAnswered(now=2, sent=500, remaining=200)) == [PostBatch(500)]
    assert p.receive(BatchAnswered(now=3, sent=200, remaining=0)) == []
    assert p.spooled == 0


def test_a_batch_without_answer_is_kept_and_resent_an_interval_later() -> None:
    p = connected()
    p.receive(SocketClosed(now=0, code=1006))
    p.spooled = 10  # as if heartbeats had been spooled meanwhile
    [post] = [a for a in tick(p, 30) if isinstance(a, PostHeartbeat)]
    assert p.receive(HeartbeatAnswered(now=30, seq=post.heartbeat.seq)) == [PostBatch(500)]
    assert p.receive(BatchFailed(now=31, status=503)) == []
    assert p.next_wakeup() is not None and p.next_wakeup() <= 61  # type: ignore[operator]
    assert PostBatch(500) in tick(p, 61)


def test_a_batch_refused_as_invalid_is_dropped_and_replay_goes_on() -> None:
    p = make()
    p.receive(Started(now=0, spooled=600))
    p.receive(AuthSucceeded(now=0, expires_in_s=86400))
    p.receive(SocketOpened(now=0))
    p.receive(welcome(0))
    out = p.receive(BatchFailed(now=1, status=422))
    assert [a for a in out if not isinstance(a, Log)] == [DropBatch(), PostBatch(500)]


def test_heartbeats_unacknowledged_when_the_socket_dies_go_to_the_spool() -> None:
    p = connected()
    [hb] = frames(tick(p, 0))
    out = p.receive(SocketClosed(now=1, code=1006))
    assert SpoolHeartbeat(hb, "boot-1") in out and p.spooled == 1  # type: ignore[arg-type]


# --- commands ---------------------------------------------------------------------------------


def test_a_command_is_acked_run_once_and_a_redelivery_gets_ack_and_the_stored_result() -> None:
    p = connected()
    first = p.receive(command())
    # recorded as interrupted before it runs: a stop or a crash meanwhile must not make it run twice
    assert first[:2] == [SendFrame(Ack(command_id="cmd-1")), RecordResult(interrupted_result("cmd-1"))]
    assert isinstance(first[2], RunCommand) and len(first) == 3
    assert p.receive(command()) == [SendFrame(Ack(command_id="cmd-1"))]  # still running
    done = p.receive(CommandFinished(now=1, result=result()))
    assert done == [RecordResult(result()), SendFrame(result())]
    again = p.receive(command())
    assert again == [SendFrame(Ack(command_id="cmd-1")), SendFrame(result())]
    assert p.receive(FrameReceived(now=2, frame=ResultAck(command_id="cmd-1"))) == [ResultDelivered("cmd-1")]
    assert p.pending_results() == []


def test_commands_executed_before_a_restart_are_not_run_again() -> None:
    p = make()
    p.receive(Started(now=0, executed={"cmd-1": result()}, pending_results=[result()]))
    p.receive(AuthSucceeded(now=0, expires_in_s=86400))
    p.receive(SocketOpened(now=0))
    assert frames(p.receive(welcome(0))) == [result()]  # the pending result is resent at once
    assert not any(isinstance(a, RunCommand) for a in p.receive(command()))


def test_a_result_finished_while_offline_is_recorded_and_sent_on_reconnect() -> None:
    p = connected()
    p.receive(command())
    p.receive(SocketClosed(now=1, code=1006))
    assert p.receive(CommandFinished(now=2, result=result())) == [RecordResult(result())]
    p.receive(SocketOpened(now=5))
    assert frames(p.receive(welcome(5))) == [result()]


# --- authentication ---------------------------------------------------------------------------


def test_bad_credentials_retry_once_then_exit_1_without_a_storm() -> None:
    p = make()
    p.receive(Started(now=0))
    out = p.receive(AuthFailed(now=1, status=401))
    assert all(isinstance(a, Log) for a in out)  # no immediate retry
    assert tick(p, p.next_wakeup() or 0) == [Authenticate()]
    [exit_] = p.receive(AuthFailed(now=5, status=401))
    assert isinstance(exit_, Exit) and exit_.code == 1 and "credentials" in exit_.message
    assert p.next_wakeup() is None and tick(p, 100) == []


def test_a_rejected_token_reauthenticates_once_at_once_then_only_after_a_backoff() -> None:
    p = make(http_only=True)
    p.receive(Started(now=0))
    p.receive(AuthSucceeded(now=0, expires_in_s=86400))
    [post] = tick(p, 0)
    assert Authenticate() in p.receive(HeartbeatFailed(now=0.1, seq=post.heartbeat.seq, status=401))  # type: ignore[attr-defined]
    p.receive(AuthSucceeded(now=0.2, expires_in_s=86400))
    [post] = [a for a in tick(p, 30) if isinstance(a, PostHeartbeat)]
    again = p.receive(HeartbeatFailed(now=30.1, seq=post.heartbeat.seq, status=401))
    assert Authenticate() not in again and p._auth_retry_at is not None


def test_a_refused_handshake_reauthenticates_and_then_reopens_the_socket() -> None:
    p = make()
    p.receive(Started(now=0))
    p.receive(AuthSucceeded(now=0, expires_in_s=86400))
    assert Authenticate() in p.receive(SocketClosed(now=1, handshake_status=403))
    assert p.receive(AuthSucceeded(now=2, expires_in_s=86400)) == [OpenSocket()]


def test_the_session_is_renewed_before_it_expires_without_dropping_the_socket() -> None:
    p = connected(refresh_margin_s=300.0)
    p.receive(AuthSucceeded(now=0, expires_in_s=1000))  # margin: min(300, 10% of 1000)
    assert Authenticate() not in tick(p, 899)
    out = tick(p, 900)
    assert Authenticate() in out and CloseSocket() not in out
    assert p.receive(AuthSucceeded(now=901, expires_in_s=1000)) == []  # socket stays as it is
    assert p.socket is SocketState.READY


def test_rate_limited_auth_waits_at_least_retry_after() -> None:
    p = make(backoff_base_s=0.5)
    p.receive(Started(now=0))
    p.receive(AuthFailed(now=0, status=429, retry_after_s=20))
    assert p.next_wakeup() is not None and p.next_wakeup() >= 20  # type: ignore[operator]


# --- shutdown ---------------------------------------------------------------------------------


def test_shutdown_with_a_socket_says_bye_and_exits_0() -> None:
    p = connected()
    out = p.receive(ShutdownRequested(now=5, wall=WALL))
    assert out == [SendFrame(Bye()), CloseSocket(1000), Exit(0, "stopped")]
    assert p.next_wakeup() is None and p.receive(ShutdownRequested(now=6, wall=WALL)) == []


def test_a_command_arriving_during_shutdown_is_left_for_the_next_run() -> None:
    p = connected()
    p.receive(ShutdownRequested(now=5, wall=WALL))
    assert p.receive(command()) == []


def test_shutdown_over_http_sends_a_final_offline_heartbeat() -> None:
    p = make(http_only=True)
    p.receive(Started(now=0))
    p.receive(AuthSucceeded(now=0, expires_in_s=86400))
    post, exit_ = p.receive(ShutdownRequested(now=5, wall=WALL))
    assert isinstance(post, PostHeartbeat) and post.final and post.heartbeat.status == "offline"
    assert exit_ == Exit(0, "stopped")


@pytest.mark.parametrize("status", [403, 400])
def test_other_refusals_of_auth_also_end_with_exit_1(status: int) -> None:
    p = make()
    p.receive(Started(now=0))
    p.receive(AuthFailed(now=0, status=status))
    [exit_] = p.receive(AuthFailed(now=1, status=status))
    assert isinstance(exit_, Exit) and exit_.code == 1


def test_a_local_maximum_interval_only_ever_shortens_the_servers() -> None:
    p = connected(max_interval_s=10.0)
    p.receive(welcome(0, interval_ms=30_000))
    assert p.interval_s == 10.0  # the operator asked for more often
    p.receive(welcome(1, interval_ms=5_000))
    assert p.interval_s == 5.0  # the server asks for more often still
    p.reconfigure(Settings(max_interval_s=2.0))
    assert p.interval_s == 2.0  # applied at once
    p.reconfigure(Settings(max_interval_s=None))
    assert p.interval_s == 5.0  # the server's again


def test_socket_heartbeats_the_server_refused_are_not_kept_for_backfill() -> None:
    p = connected()
    [first] = frames(tick(p, 0))
    p.receive(FrameReceived(now=0.1, frame=Error(code="invalid_heartbeat", message="sent_at")))
    [second] = frames(tick(p, 30))
    p.receive(FrameReceived(now=30.1, frame=HeartbeatAck(seq=second.seq)))  # type: ignore[attr-defined]
    assert p.heartbeat_errors == 1 and p.heartbeat_count == 1
    assert not [a for a in p.receive(SocketClosed(now=31, code=1006)) if isinstance(a, SpoolHeartbeat)]
    assert first.seq < second.seq  # type: ignore[attr-defined]


def test_a_clock_far_off_the_servers_borrows_its_time_for_sent_at() -> None:
    p = make()
    p.receive(Started(now=0))
    p.receive(AuthSucceeded(now=0, expires_in_s=86400))
    p.receive(SocketOpened(now=0))
    booted_in_1970 = datetime(1970, 1, 1, tzinfo=UTC)
    frame = welcome(0).frame
    out = p.receive(FrameReceived(now=0, frame=frame, wall=booted_in_1970))
    assert any(isinstance(a, Log) and "clock" in a.message for a in out)
    [hb] = frames(p.receive(Tick(now=0, wall=booted_in_1970)))
    assert hb.sent_at == WALL  # type: ignore[attr-defined]
    near = connected()
    near.receive(FrameReceived(now=1, frame=frame, wall=WALL.replace(second=30)))  # 30 s: left alone
    [hb] = frames(near.receive(Tick(now=1, wall=WALL.replace(second=30))))
    assert hb.sent_at == WALL.replace(second=30)  # type: ignore[attr-defined]


def test_a_maximum_interval_applies_before_the_server_speaks() -> None:
    assert make(heartbeat_interval_s=30.0, max_interval_s=10.0).interval_s == 10.0
