"""The agent process across platform outages: ``fleet up`` is stopped (SIGTERM) and started again on the
same port, database and key prefix, each test on a platform of its own.

- an outage of 10 s: the agent spools its heartbeats, backfills them when the platform is back (in
  order, each ``(boot, seq)`` once, flagged ``backfilled`` on the raw chart) and the status history
  shows the gap with its reason;
- a command whose result could not reach the server, then an agent restart: the server delivers it
  again and the agent answers from its spool without running it a second time;
- a command still running when the agent is stopped: the next run reports it interrupted and does
  not run it again (the platform keeps running for this one).
"""

from __future__ import annotations

import asyncio
import signal
import stat
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis

from libs.events.envelope import decode_entry, decode_event
from libs.events.schemas import REGISTRY
from libs.events.schemas.telemetry import HeartbeatReceived

from .conftest import REDIS_URL
from .test_agent_process import (  # noqa: F401 (the fixtures)
    Agent,
    Platform,
    agents_fixture,
    device,
    finished_command,
    history,
    platform_for_fixture,
    poll,
)

OUTAGE_S = 10.0


class StreamTail:
    """Every entry of one stream, read by a thread as it is added (retention may trim it later)."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.entries: list[tuple[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        client = redis.Redis.from_url(REDIS_URL)
        cursor = "0-0"
        while not self._stop.is_set():
            for _stream, entries in client.xread({self.stream: cursor}, count=500, block=200) or []:
                for entry_id, fields in entries:
                    cursor = entry_id.decode()
                    self.entries.append((cursor, decode_event(decode_entry(fields), REGISTRY)))
        client.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def heartbeats(tail: StreamTail, device_id: str) -> list[HeartbeatReceived]:
    """The device's heartbeat facts in stream order."""
    return [e for _id, e in tail.entries if isinstance(e, HeartbeatReceived) and e.device_id == device_id]


def db_rows(database_url: str, device_id: str) -> list[dict[str, Any]]:
    """The device's time-series rows (seq, sent_at, backfill), by time."""

    async def fetch() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch(
                "SELECT seq, sent_at, ts, backfill FROM telemetry.heartbeat_metrics "
                "WHERE device_id = $1 ORDER BY ts",
                device_id,
            )
        finally:
            await conn.close()
        return [dict(r) for r in rows]

    return asyncio.run(fetch())


@pytest.mark.slow
def test_an_outage_is_spooled_then_backfilled_in_order_and_shows_in_the_history(
    platform_for: Callable[[], Platform], agents: Callable[..., Agent], tmp_path: Path
) -> None:
    platform = platform_for()
    platform.start()
    tail = StreamTail(platform.prefix + "telemetry:heartbeats")
    try:
        op = platform.operator()
        device_id, secret = platform.new_device(op)
        # every missed heartbeat is spooled, so the backfill has something to say about each second
        agent = agents(platform, device_id, secret, tmp_path / "state", FLEET_AGENT_OFFLINE_SAMPLE_EVERY="1")
        poll("online", lambda: device(op, device_id)["status"] == "online")
        poll("a few live heartbeats", lambda: len(heartbeats(tail, device_id)) >= 3)
        op.close()

        down_at = datetime.now(UTC)
        platform.stop()
        time.sleep(OUTAGE_S)  # the outage the acceptance asks for
        spooled = (agent.health() or {}).get("spooled", 0)
        assert spooled >= 3, agent.log()
        platform.start()
        up_at = datetime.now(UTC)

        op = platform.operator()
        poll("the spool replayed", lambda: (h := agent.health()) and h["spooled"] == 0 and h, timeout=30)
        poll("online again", lambda: device(op, device_id)["status"] == "online")
        # the tail thread and the time-series writer follow the stream: wait for them to see it all
        back = poll(
            "the backfill in the stream",
            lambda: len(b := [hb for hb in heartbeats(tail, device_id) if hb.backfill]) >= spooled and b,
        )
        seen = heartbeats(tail, device_id)
        # each heartbeat once, the backfill in the order it was sampled, all from the gap
        keys = [(hb.boot, hb.seq) for hb in seen]
        assert len(keys) == len(set(keys)), keys
        assert [hb.seq for hb in back] == sorted(hb.seq for hb in back), keys
        assert len({hb.boot for hb in seen}) == 1
        window = (down_at - timedelta(seconds=2), up_at + timedelta(seconds=3))
        assert all(hb.sent_at and window[0] <= hb.sent_at <= window[1] for hb in back), keys
        db_url = platform.env["DATABASE_URL"]
        rows = poll("the backfill stored", lambda: len(r := db_rows(db_url, device_id)) >= len(seen) and r)
        assert len(rows) == len({r["seq"] for r in rows}), rows
        assert sorted(r["seq"] for r in rows if r["backfill"]) == [hb.seq for hb in back]

        def chart() -> dict[str, Any]:
            raw = op.get(f"/api/v1/devices/{device_id}/metrics", params={"step": "raw", "from": since})
            assert raw.status_code == 200, raw.text
            return dict(raw.json())

        since = _iso(down_at, -120)
        flagged = poll("backfilled points on the raw chart", lambda: chart()["backfilled"])
        assert all(len(times) == len(back) for times in flagged.values()), (flagged, keys)

        gap = poll(
            "the gap in the history",
            lambda: (
                (g := _transitions_after(history(op, device_id), down_at))
                and g[-1]["status"] == "online"
                and g
            ),
        )
        assert any(t["status"] in ("late", "offline") and t["reason"] for t in gap), gap
        assert gap[-1]["reason"] == "heartbeat_resumed", gap
        op.close()
        assert agent.stop() == 0, agent.log()
    finally:
        tail.close()


def _iso(at: datetime, shift_s: float = 0) -> str:
    return (at + timedelta(seconds=shift_s)).isoformat()


def _transitions_after(items: list[dict[str, Any]], at: datetime) -> list[dict[str, Any]]:
    return [t for t in items if datetime.fromisoformat(t["at"]) >= at]


SCRIPT = """#!/bin/sh
# one line per run, then wait (at most 30 s) until the test says go: it stops the platform meanwhile
echo "ran $$" >> "$1"
i=0
while [ ! -e "$2" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
echo done
"""


def allow_listed_script(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """``once.sh`` in an allow-list dir: the file it appends to, the file that releases it, the env."""
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "once.sh").write_text(SCRIPT)
    (scripts / "once.sh").chmod(stat.S_IRWXU)
    return tmp_path / "ran.txt", tmp_path / "go", {"FLEET_AGENT_SCRIPTS_DIR": str(scripts)}


@pytest.mark.slow
def test_a_command_redelivered_after_an_agent_restart_is_not_run_twice(
    platform_for: Callable[[], Platform], agents: Callable[..., Agent], tmp_path: Path
) -> None:
    platform = platform_for()
    platform.start()
    ran, go, env = allow_listed_script(tmp_path)
    op = platform.operator()
    device_id, secret = platform.new_device(op)
    state = tmp_path / "state"
    agent = agents(platform, device_id, secret, state, **env)
    poll("online", lambda: device(op, device_id)["status"] == "online")
    made = op.post(
        f"/api/v1/devices/{device_id}/commands",
        json={"command_type": "run_script", "parameters": {"name": "once.sh", "args": [str(ran), str(go)]}},
    )
    assert made.status_code == 201, made.text
    command_id = made.json()["command_id"]
    poll("the script started", lambda: ran.exists() and ran.read_text())
    get = lambda: op.get(f"/api/v1/commands/{command_id}").json()  # noqa: E731
    poll("the command delivered", lambda: get()["state"] == "delivered")
    op.close()

    platform.stop()
    go.touch()  # the script ends now, and its result cannot reach the server
    poll("the result spooled", lambda: "done" in _spooled_result(state, command_id), timeout=20)
    assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
    platform.start()
    agent = agents(platform, device_id, secret, state, **env)

    op = platform.operator()
    done = finished_command(op, command_id, timeout=30)
    assert done["state"] == "succeeded", (done, agent.log())
    assert done["output"].strip() == "done"
    # the gateway handed the command to the restarted agent again, which answered from its spool
    kinds = lambda: [kind for kind, _e in _command_steps(platform.prefix, command_id)]  # noqa: E731
    poll("the redelivery acknowledged", lambda: kinds().count("CommandAcked") >= 2, timeout=10)
    steps = _command_steps(platform.prefix, command_id)
    pushes = [e.connection_id for kind, e in steps if kind == "CommandPushed"]
    assert len(pushes) == 2 and len(set(pushes)) == 2, steps
    # the restarted agent acknowledged the redelivery...
    assert [kind for kind, _e in steps].count("CommandAcked") == 2, steps
    assert ran.read_text().count("ran ") == 1, ran.read_text()  # ...and did not run it again
    # one result recorded: the agent's resend of its spooled result and its answer to the
    # redelivery are one result to the server (the second push may follow the result in the log,
    # so the command's attempts need not count it)
    assert [kind for kind, _e in steps].count("CommandFinished") == 1, steps
    op.close()
    assert agent.stop() == 0, agent.log()


@pytest.mark.slow
def test_a_command_cut_short_by_sigterm_is_reported_interrupted_and_not_run_again(
    platform_for: Callable[[], Platform], agents: Callable[..., Agent], tmp_path: Path
) -> None:
    platform = platform_for()
    platform.start()
    ran, go, env = allow_listed_script(tmp_path)
    op = platform.operator()
    device_id, secret = platform.new_device(op)
    state = tmp_path / "state"
    agent = agents(platform, device_id, secret, state, **env)
    poll("online", lambda: device(op, device_id)["status"] == "online")
    made = op.post(
        f"/api/v1/devices/{device_id}/commands",
        json={"command_type": "run_script", "parameters": {"name": "once.sh", "args": [str(ran), str(go)]}},
    )
    assert made.status_code == 201, made.text
    command_id = made.json()["command_id"]
    poll("the script started", lambda: ran.exists() and ran.read_text())
    state_of = lambda: op.get(f"/api/v1/commands/{command_id}").json()["state"]  # noqa: E731
    poll("the command delivered", lambda: state_of() == "delivered")
    assert agent.stop(signal.SIGTERM) == 0, agent.log()  # the script is killed with the agent

    agent = agents(platform, device_id, secret, state, **env)  # the server hands it over again
    done = finished_command(op, command_id, timeout=30)
    assert done["state"] == "failed" and done["error"].startswith("interrupted:"), done
    assert ran.read_text().count("ran ") == 1, ran.read_text()
    op.close()
    assert agent.stop() == 0, agent.log()


def _spooled_result(state: Path, command_id: str) -> str:
    """The result the agent recorded for the command (its spool, read as the next run will)."""
    import sqlite3

    db = state / "spool.sqlite3"
    if not db.exists():
        return ""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT body FROM results WHERE command_id = ?", (command_id,)).fetchone()
    return row[0].decode() if row else ""


def _command_steps(prefix: str, command_id: str) -> list[tuple[str, Any]]:
    """The command's events on ``events:gateway`` and ``events:commands``, each stream in its order."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        entries = [*client.xrange(prefix + "events:gateway"), *client.xrange(prefix + "events:commands")]
    finally:
        client.close()
    events = [decode_event(decode_entry(fields), REGISTRY) for _id, fields in entries]
    return [(type(e).__name__, e) for e in events if getattr(e, "command_id", None) == command_id]
