"""The agent's durable spool: one SQLite file (WAL) in the state dir, ``<state_dir>/spool.sqlite3``.

It keeps what must survive an outage or a restart:

- **heartbeats** that could not be delivered (HTTP bodies of ``POST /api/v1/agent/heartbeat``, with
  their ``boot``), replayed oldest first in batches; at most ``max_heartbeats``: beyond that the
  oldest are dropped, and ``dropped`` counts them (kept across restarts);
- **results** of executed commands: every command id the agent ran, with its result frame, so a
  redelivered command is acknowledged and answered again but never run twice (also after a
  restart); ``pending`` ones are not yet acknowledged by the server and are resent on reconnect.
  Delivered results are pruned by age (``result_ttl_s``) and count (``max_results``); pending ones
  are never pruned by count alone.

Synchronous and fast (one small transaction per call); ``agent.runner`` calls it directly.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from libs.events.schemas.agent import Result

FILENAME = "spool.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS heartbeats (id INTEGER PRIMARY KEY AUTOINCREMENT, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS results (
  command_id TEXT PRIMARY KEY, body BLOB NOT NULL, pending INTEGER NOT NULL, finished_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS results_finished ON results (finished_at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class Spool:
    """Bounded SQLite spool of heartbeats and command results."""

    def __init__(
        self,
        path: Path,
        *,
        max_heartbeats: int = 10_000,
        max_results: int = 1000,
        result_ttl_s: float = 7 * 86400.0,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_heartbeats = max_heartbeats
        self.max_results = max_results
        self.result_ttl_s = result_ttl_s
        # autocommit off by default: each method is one explicit transaction via `with self._db`
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    @classmethod
    def in_dir(cls, state_dir: Path, **limits: Any) -> Spool:
        """The spool file of a state dir."""
        return cls(state_dir / FILENAME, **limits)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    # --- heartbeats ---------------------------------------------------------------------------

    def add_heartbeat(self, body: dict[str, Any]) -> int:
        """Keep one heartbeat body; returns how many old ones were dropped to stay in bounds."""
        with self._db:
            self._db.execute("INSERT INTO heartbeats (body) VALUES (?)", (msgspec.json.encode(body),))
            excess = self.heartbeat_count() - self.max_heartbeats
            if excess <= 0:
                return 0
            self._db.execute(
                "DELETE FROM heartbeats WHERE id IN (SELECT id FROM heartbeats ORDER BY id LIMIT ?)",
                (excess,),
            )
            self._bump("dropped", excess)
            return excess

    def oldest_heartbeats(self, limit: int) -> list[tuple[int, dict[str, Any]]]:
        """Up to ``limit`` spooled heartbeats, oldest first, as ``(id, body)``."""
        rows = self._db.execute("SELECT id, body FROM heartbeats ORDER BY id LIMIT ?", (limit,))
        return [(row_id, msgspec.json.decode(body)) for row_id, body in rows.fetchall()]

    def delete_heartbeats(self, ids: Sequence[int], *, dropped: bool = False) -> None:
        """Forget these heartbeats (delivered, or ``dropped`` as undeliverable and counted)."""
        with self._db:
            self._db.executemany("DELETE FROM heartbeats WHERE id = ?", [(i,) for i in ids])
            if dropped:
                self._bump("dropped", len(ids))

    def heartbeat_count(self) -> int:
        """Heartbeats in the spool."""
        return int(self._db.execute("SELECT count(*) FROM heartbeats").fetchone()[0])

    @property
    def dropped(self) -> int:
        """Heartbeats dropped so far (bound reached, or refused by the server)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()
        return int(row[0]) if row else 0

    # --- results ------------------------------------------------------------------------------

    def record_result(self, result: Result, *, finished_at: float) -> None:
        """Remember that a command ran, with its result, pending until the server acknowledges it."""
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO results (command_id, body, pending, finished_at) VALUES (?, ?, 1, ?)",
                (result.command_id, msgspec.json.encode(result), finished_at),
            )

    def mark_delivered(self, command_id: str) -> None:
        """The server recorded this result."""
        with self._db:
            self._db.execute("UPDATE results SET pending = 0 WHERE command_id = ?", (command_id,))

    def pending_results(self) -> list[Result]:
        """Results not yet acknowledged, oldest first."""
        rows = self._db.execute("SELECT body FROM results WHERE pending = 1 ORDER BY finished_at, rowid")
        return [msgspec.json.decode(body, type=Result) for (body,) in rows.fetchall()]

    def executed(self) -> dict[str, Result]:
        """Every remembered executed command id with its result, oldest first."""
        rows = self._db.execute("SELECT command_id, body FROM results ORDER BY finished_at, rowid")
        return {cid: msgspec.json.decode(body, type=Result) for cid, body in rows.fetchall()}

    def prune(self, *, now: float) -> int:
        """Forget delivered results older than the TTL or beyond the count; returns how many."""
        with self._db:
            aged = self._db.execute(
                "DELETE FROM results WHERE pending = 0 AND finished_at < ?", (now - self.result_ttl_s,)
            ).rowcount
            over = self._db.execute(
                "DELETE FROM results WHERE pending = 0 AND command_id IN (SELECT command_id FROM results"
                " WHERE pending = 0 ORDER BY finished_at DESC, rowid DESC LIMIT -1 OFFSET ?)",
                (self.max_results,),
            ).rowcount
        return int(aged) + int(over)

    def _bump(self, key: str, n: int) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = value + ?",
            (key, n, n),
        )
