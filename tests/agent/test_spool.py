"""The SQLite spool, on real files in tmp_path: bounds, order, persistence across restarts."""

from __future__ import annotations

from pathlib import Path

from agent.spool import Spool
from libs.events.schemas.agent import Result


def body(seq: int) -> dict[str, object]:
    return {"seq": seq, "sent_at": "2026-01-01T00:00:00Z", "status": "online", "metrics": {}, "boot": "b1"}


def test_heartbeats_come_back_oldest_first_in_batches(tmp_path: Path) -> None:
    spool = Spool.in_dir(tmp_path)
    for seq in range(7):
        spool.add_heartbeat(body(seq))
    first = spool.oldest_heartbeats(3)
    assert [b["seq"] for _, b in first] == [0, 1, 2]
    spool.delete_heartbeats([i for i, _ in first])
    assert [b["seq"] for _, b in spool.oldest_heartbeats(500)] == [3, 4, 5, 6]
    assert spool.heartbeat_count() == 4


def test_the_bound_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    spool = Spool.in_dir(tmp_path, max_heartbeats=5)
    dropped = [spool.add_heartbeat(body(seq)) for seq in range(8)]
    assert dropped == [0, 0, 0, 0, 0, 1, 1, 1]
    assert [b["seq"] for _, b in spool.oldest_heartbeats(10)] == [3, 4, 5, 6, 7]
    ids = [i for i, _ in spool.oldest_heartbeats(2)]
    spool.delete_heartbeats(ids, dropped=True)  # refused by the server
    assert spool.dropped == 5


def test_everything_survives_a_restart(tmp_path: Path) -> None:
    spool = Spool.in_dir(tmp_path)
    spool.add_heartbeat(body(1))
    spool.record_result(Result(command_id="c1", status="succeeded", result={"a": 1}), finished_at=10.0)
    spool.record_result(Result(command_id="c2", status="failed", error="no"), finished_at=11.0)
    spool.mark_delivered("c1")
    spool.close()
    again = Spool.in_dir(tmp_path)
    assert [b["seq"] for _, b in again.oldest_heartbeats(10)] == [1]
    assert list(again.executed()) == ["c1", "c2"]
    assert again.executed()["c1"].result == {"a": 1}
    assert [r.command_id for r in again.pending_results()] == ["c2"]
    assert (tmp_path / "spool.sqlite3").exists()
    mode = again._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_delivered_results_are_pruned_by_age_and_count_pending_ones_never(tmp_path: Path) -> None:
    spool = Spool.in_dir(tmp_path, max_results=2, result_ttl_s=100.0)
    for i in range(5):
        spool.record_result(Result(command_id=f"c{i}", status="succeeded"), finished_at=float(i))
        if i != 1:
            spool.mark_delivered(f"c{i}")
    assert spool.prune(now=50.0) == 2  # count: keep the newest 2 delivered (c3, c4) and pending c1
    assert set(spool.executed()) == {"c1", "c3", "c4"}
    assert spool.prune(now=1000.0) == 2  # age: every delivered one is old now
    assert set(spool.executed()) == {"c1"}


def test_recording_a_result_again_keeps_one_row(tmp_path: Path) -> None:
    spool = Spool.in_dir(tmp_path)
    spool.record_result(Result(command_id="c1", status="failed"), finished_at=1.0)
    spool.record_result(Result(command_id="c1", status="succeeded"), finished_at=2.0)
    assert [r.status for r in spool.pending_results()] == ["succeeded"]
