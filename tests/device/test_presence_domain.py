"""The presence state machine, pure: every transition and reason, ordering, damping, timings."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from services.device.presence import (
    Beat,
    Connected,
    Disconnected,
    Presence,
    Timing,
    Transition,
    advance,
    fold,
    timing_from,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
FAST = Timing(interval_s=1, timeout_s=3)  # late after 1.5 s, offline after 3 s, flap window 3 s


def s(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def moves(ts: list[Transition]) -> list[tuple[str, str, str]]:
    return [(t.previous, t.status, t.reason) for t in ts]


def run(signals: list, now: float | None = None, timing: Timing = FAST, state: Presence | None = None):
    state, out = fold(state or Presence(), signals, timing)
    if now is not None:
        state = advance(state, s(now), out)
    return state, out


def test_first_heartbeat_then_late_then_offline_then_resumed():
    state, out = run([Beat(s(0), seq=1)], now=10)
    assert moves(out) == [
        ("offline", "online", "first_heartbeat"),
        ("online", "late", "heartbeat_missed"),
        ("late", "offline", "heartbeat_timeout"),
    ]
    assert [t.at for t in out] == [s(0), s(1.5), s(3)]
    state, out = run([Beat(s(11), seq=2)], state=state)
    assert moves(out) == [("offline", "online", "heartbeat_resumed")]
    assert state.late_at == s(12.5) and state.offline_at == s(14) and state.last_seen == s(11)


def test_late_then_resumed():
    _, out = run([Beat(s(0), seq=1), Beat(s(2), seq=2)])
    assert moves(out)[1:] == [("online", "late", "heartbeat_missed"), ("late", "online", "heartbeat_resumed")]


def test_steady_heartbeats_report_only_the_first():
    _, out = run([Beat(s(i), seq=i) for i in range(10)], now=10.4)
    assert moves(out) == [("offline", "online", "first_heartbeat")]


def test_clean_shutdown_by_heartbeat_status_and_by_socket():
    _, out = run([Beat(s(0), seq=1), Beat(s(0.5), status="offline", seq=2)], now=20)
    assert moves(out)[1:] == [("online", "offline", "agent_shutdown")]
    _, out = run([Connected(s(0)), Disconnected(s(1), reason="agent_shutdown")], now=20)
    assert moves(out) == [("offline", "online", "first_heartbeat"), ("online", "offline", "agent_shutdown")]


def test_socket_closed_and_live_connection_suspends_deadlines():
    state, out = run([Connected(s(0)), Beat(s(1), seq=1)], now=60)
    assert state.status == "online" and state.next_at is None
    state, out = run([Disconnected(s(61))], state=state)
    assert moves(out) == [("online", "offline", "socket_closed")]


def test_duplicate_and_out_of_order_by_seq_never_flip():
    base, _ = run([Beat(s(0), seq=5)])
    for stale in (Beat(s(1), seq=5), Beat(s(1), seq=4)):
        state, out = run([stale], state=base)
        assert out == [] and state == base
    # A straggler arriving while late does not bring the device back.
    late, out = run([], now=2, state=base)
    assert late.status == "late"
    state, out = run([Beat(s(2.1), seq=3)], state=late)
    assert out == [] and state.status == "late"


def test_duplicate_and_out_of_order_by_time_without_seq():
    base, _ = run([Beat(s(1), sent_at=s(1))])
    for stale in (Beat(s(1.2), sent_at=s(1)), Beat(s(1.2), sent_at=s(0.5))):
        state, out = run([stale], state=base)
        assert out == [] and state == base
    dup, _ = run([Beat(s(1))], state=run([Beat(s(1))])[0])
    assert dup.last_seen == s(1)


def test_offline_device_accepts_a_restarted_sequence_by_time():
    state, _ = run([Beat(s(0), seq=100, sent_at=s(0))], now=5)
    assert state.status == "offline"
    state, out = run([Beat(s(6), seq=1, sent_at=s(6))], state=state)
    assert moves(out) == [("offline", "online", "heartbeat_resumed")]


def test_flapping_late_is_reported_once_within_the_window():
    # late at 1.5, resumed at 2, silent: the next late (3.5) is within 3 s of the first -> damped,
    # the device stays online until its timeout (5) and goes offline then.
    _, out = run([Beat(s(0), seq=1), Beat(s(2), seq=2)], now=10)
    assert moves(out) == [
        ("offline", "online", "first_heartbeat"),
        ("online", "late", "heartbeat_missed"),
        ("late", "online", "heartbeat_resumed"),
        ("online", "offline", "heartbeat_timeout"),
    ]
    assert out[-1].at == s(5)


def test_late_outside_the_window_is_reported_again():
    # late at 1.5 (reported); resumed at 2 and again at 3.4 before the damped deadline (3.5): the
    # next late (4.9) is 3.4 s after the last one, outside the window, so it is reported.
    _, out = run([Beat(s(0), seq=1), Beat(s(2), seq=2), Beat(s(3.4), seq=3)], now=5)
    assert [t.status for t in out] == ["online", "late", "online", "late"]
    # The window counts from the last *reported* late: the damped one at 3.5 does not extend it,
    # so the late at 5.5 (4 s after the reported one) is reported.
    _, out = run([Beat(s(0), seq=1), Beat(s(2), seq=2), Beat(s(4), seq=3)], now=6)
    assert [t.status for t in out] == ["online", "late", "online", "late"]


def test_a_device_that_keeps_bouncing_is_reported_late_at_most_once_per_window():
    # A heartbeat every 2 s against a late-after of 1.5 s: late every 2 s without damping.
    _, out = run([Beat(s(2 * i), seq=i) for i in range(30)], now=59)
    lates = [t.at for t in out if t.status == "late"]
    assert 5 <= len(lates) <= 60 / 3 + 1  # still visible, but at most one per 3 s window
    assert all(b - a >= timedelta(seconds=3) for a, b in itertools.pairwise(lates))


def test_quiet_before_applies_but_does_not_report():
    state, out = run([Beat(s(0), seq=1)], now=10, state=Presence(quiet_before=s(20)))
    assert out == [] and state.status == "offline" and state.reason == "heartbeat_timeout"


def test_per_device_timings_and_layers():
    assert timing_from({"heartbeat_interval_s": 1, "heartbeat_timeout_s": 3}) == Timing(1, 3)
    assert timing_from({"heartbeat_interval_s": 10}, {"heartbeat_timeout_s": 40}) == Timing(10, 40)
    assert timing_from({"heartbeat_interval_s": "x", "heartbeat_timeout_s": -1}) == Timing()
    assert timing_from({"heartbeat_interval_s": 100}) == Timing(100, 100)  # timeout >= interval
    assert timing_from(None, {}) == Timing(30, 90)
    state, _ = run([Beat(s(0), seq=1)], timing=Timing(10, 40))
    assert state.late_at == s(15) and state.offline_at == s(40)
    state, _ = run([Beat(s(0), seq=1)], timing=Timing())
    assert state.late_at == s(45) and state.offline_at == s(90)


def test_a_restarted_agent_counts_again_from_zero_and_is_not_ignored():
    # Run "a" reaches seq 500; the agent restarts within the timeout as run "b" at seq 0.
    state, out = run([Beat(s(0), seq=499, boot="a"), Beat(s(1), seq=500, boot="a")])
    state, out = run([Beat(s(2), seq=0, boot="b", sent_at=s(2))], state=state)
    assert out == [] and state.last_seq == 0 and state.boot == "b" and state.last_seen == s(2)
    assert state.offline_at == s(5)  # the deadline moved: the device is not left to go late
    # A straggler of run "a" (older by time) arriving after run "b" started changes nothing.
    after, out = run([Beat(s(2.5), seq=501, boot="a", sent_at=s(1.5))], state=state)
    assert out == [] and after == state
    # Within run "b", sequence numbers decide even when the clock steps back.
    after, out = run([Beat(s(3), seq=1, boot="b", sent_at=s(0.5))], state=state)
    assert after.last_seq == 1 and after.last_seen == s(3)
    after, out = run([Beat(s(3), seq=0, boot="b", sent_at=s(9))], state=state)
    assert after == state  # a duplicate, whatever its clock says


def test_only_the_socket_that_made_the_device_connected_can_disconnect_it():
    # The device reconnects through another gateway before the first one notices the old socket died.
    state, out = run(
        [
            Connected(s(0), "sock-1", "gw-a"),
            Connected(s(5), "sock-2", "gw-b"),
            Disconnected(s(6), connection_id="sock-1"),
        ]
    )
    assert moves(out) == [("offline", "online", "first_heartbeat")]
    assert state.status == "online" and state.connected and state.connection_id == "sock-2"
    assert state.gateway_id == "gw-b"  # whose silence would mean the socket is gone
    state, out = run([Disconnected(s(60), connection_id="sock-2")], state=state)
    assert moves(out) == [("online", "offline", "socket_closed")] and not state.connected
    assert state.gateway_id is None
    # A close repeated (or without an id) once offline changes nothing, not even the reason.
    again, out = run([Disconnected(s(61), reason="agent_shutdown")], state=state)
    assert out == [] and again == state
