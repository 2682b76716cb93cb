"""The fleet simulator's pure parts: what each profile decides over time (seeded RNG, times given, no
sleeps), and the in-memory spool behaving like the SQLite one."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.sim_schedule import Op, ProfileParams, Schedule, pool_size, start_times
from agent.sim_spool import MemorySpool
from agent.spool import Spool
from libs.events.schemas.agent import Result

PARAMS = ProfileParams(ramp_per_s=10.0, period_s=10.0, burst_fraction=0.2)


def run(schedule: Schedule, until: float, step: float = 0.25) -> list[Op]:
    """Every operation handed out when polled every ``step`` seconds up to ``until``."""
    ops: list[Op] = []
    t = 0.0
    while t <= until:
        ops += schedule.due(t)
        t += step
    return ops


def running_at(ops: list[Op], t: float) -> set[int]:
    live: set[int] = set()
    for op in ops:
        if op.at <= t:
            (live.add if op.kind == "start" else live.discard)(op.slot)
    return live


def test_steady_starts_every_agent_once_at_the_ramp_rate_and_never_stops_them():
    ops = run(Schedule("steady", 50, PARAMS, random.Random(1)), until=600)
    assert [op.kind for op in ops] == ["start"] * 50
    assert [op.slot for op in ops] == list(range(50))
    assert [op.at for op in ops] == pytest.approx([i / 10 for i in range(50)])


def test_operations_come_out_only_when_due_and_in_time_order():
    schedule = Schedule("steady", 5, PARAMS, random.Random(1))
    assert schedule.due(0.05) == [Op(0.0, 0, "start", 0)]
    assert schedule.next_at() == pytest.approx(0.1)
    assert [op.slot for op in schedule.due(0.35)] == [1, 2, 3]
    assert [op.slot for op in schedule.due(100)] == [4]
    assert schedule.next_at() is None and schedule.due(1000) == []


def test_a_schedule_does_not_depend_on_how_often_it_is_polled():
    coarse = run(Schedule("flapping", 40, PARAMS, random.Random(7)), until=300, step=5.0)
    fine = run(Schedule("flapping", 40, PARAMS, random.Random(7)), until=300, step=0.1)
    assert coarse == fine


def test_flapping_agents_alternate_stop_and_start_within_their_up_and_down_times():
    params = ProfileParams(ramp_per_s=10.0, flap_fraction=0.25, flap_up_s=(10, 20), flap_down_s=(2, 5))
    ops = run(Schedule("flapping", 40, params, random.Random(3)), until=200)
    by_slot: dict[int, list[Op]] = {}
    for op in ops:
        by_slot.setdefault(op.slot, []).append(op)
    flappers = {slot for slot, seq in by_slot.items() if len(seq) > 1}
    assert len(flappers) == 10  # a quarter of 40
    for slot, seq in by_slot.items():
        kinds = [op.kind for op in seq]
        assert kinds == ["start", "stop"] * (len(kinds) // 2) + ["start"] * (len(kinds) % 2)
        gaps = [b.at - a.at for a, b in itertools.pairwise(seq)]
        if slot in flappers:
            assert all(10 <= g <= 20 for g in gaps[0::2]) and all(2 <= g <= 5 for g in gaps[1::2])
            assert len(seq) >= 2 * (200 // 25)  # at most 25 s per cycle: it keeps flapping
    assert len(running_at(ops, 200)) >= 30  # the steady three quarters stay


def test_bursty_starts_waves_within_the_first_part_of_each_period():
    ops = run(Schedule("bursty", 45, PARAMS, random.Random(1)), until=100)
    assert len(ops) == 45 and {op.kind for op in ops} == {"start"}
    # ramp 10/s over a 2 s window (20 % of 10 s): 20 agents a wave, in waves at 0, 10 and 20 s
    waves = Counter(int(op.at // 10) for op in ops)
    assert waves == {0: 20, 1: 20, 2: 5}
    assert all(op.at % 10 < 2 for op in ops)
    in_wave = [op.at for op in ops if 10 <= op.at < 20]
    assert min(b - a for a, b in itertools.pairwise(in_wave)) == pytest.approx(0.1)


def test_bursty_needs_no_more_devices_and_its_start_times_are_phase_aligned():
    times = start_times("bursty", 100, PARAMS)
    assert pool_size("bursty", 100, PARAMS) == 100
    assert {round(t % PARAMS.period_s, 6) < 2 for t in times} == {True}


def test_churn_replaces_stopped_agents_with_idle_ones_keeping_the_count():
    params = ProfileParams(ramp_per_s=100.0, churn_per_min=6.0, churn_spare=0.5, churn_gap_s=1.0)
    schedule = Schedule("churn", 20, params, random.Random(5))
    assert schedule.pool == 30
    ops = run(schedule, until=120)
    stops = [op for op in ops if op.kind == "stop"]
    later_starts = [op for op in ops if op.kind == "start" and op.at > 1]
    assert len(stops) > 20  # 6 a minute per agent: about 240 in two minutes
    replaced_at = {round(op.at, 9) for op in later_starts}
    assert all(round(op.at + 1.0, 9) in replaced_at for op in stops if op.at + 1.0 <= 120)  # 1 s later
    assert len(later_starts) <= len(stops)
    assert {op.slot for op in later_starts} & set(range(20, 30))  # spare devices were used
    for t in (30.0, 60.5, 119.0):
        assert 20 - 5 <= len(running_at(ops, t)) <= 20  # never more than asked; short gaps only
    for op in later_starts[:10]:
        assert op.slot not in running_at([o for o in ops if o.at < op.at], op.at - 1e-9)


def test_churn_needs_spare_devices_and_other_profiles_do_not():
    params = ProfileParams(churn_spare=0.1)
    assert pool_size("churn", 1000, params) == 1100
    assert pool_size("churn", 3, params) == 4
    assert pool_size("steady", 1000, params) == pool_size("flapping", 1000, params) == 1000


def test_an_unknown_profile_is_refused():
    with pytest.raises(ValueError, match="unknown profile"):
        Schedule("chaos", 1, PARAMS, random.Random(0))


# --- the in-memory spool ----------------------------------------------------------------------


def result(command_id: str) -> Result:
    return Result(command_id=command_id, status="succeeded", executed_at=datetime(2026, 1, 1, tzinfo=UTC))


def exercise(spool: Spool) -> list[object]:
    """The same calls on either spool; everything they answer."""
    seen: list[object] = [spool.heartbeat_count(), spool.oldest_heartbeats(5), spool.executed()]
    seen += [spool.add_heartbeat({"seq": i}) for i in range(5)]  # bound 3: two dropped
    rows = spool.oldest_heartbeats(2)
    seen += [[body for _, body in rows], spool.heartbeat_count(), spool.dropped]
    spool.delete_heartbeats([row_id for row_id, _ in rows[:1]])
    spool.delete_heartbeats([row_id for row_id, _ in rows[1:]], dropped=True)
    seen += [[b for _, b in spool.oldest_heartbeats(10)], spool.dropped]
    for cid, at in (("a", 10.0), ("b", 5.0), ("c", 20.0), ("d", 30.0), ("a", 25.0)):
        spool.record_result(result(cid), finished_at=at)
    spool.mark_delivered("b")
    spool.mark_delivered("c")
    spool.mark_delivered("d")
    seen += [list(spool.executed()), [r.command_id for r in spool.pending_results()]]
    seen += [spool.prune(now=100.0), list(spool.executed())]  # TTL 80: b and c aged out
    seen += [spool.prune(now=1000.0), list(spool.executed())]  # d aged out, pending a stays
    return seen


def test_the_memory_spool_answers_like_the_sqlite_one():
    limits = {"max_heartbeats": 3, "max_results": 1, "result_ttl_s": 80.0}
    assert exercise(MemorySpool(**limits)) == exercise(Spool(Path(":memory:"), **limits))


def test_the_memory_spool_prunes_delivered_results_beyond_the_count_newest_kept():
    for spool in (MemorySpool(max_results=2), Spool(Path(":memory:"), max_results=2)):
        for i in range(5):
            spool.record_result(result(f"r{i}"), finished_at=float(i))
            spool.mark_delivered(f"r{i}")
        spool.record_result(result("pending"), finished_at=0.5)
        assert spool.prune(now=10.0) == 3
        assert list(spool.executed()) == ["pending", "r3", "r4"]
