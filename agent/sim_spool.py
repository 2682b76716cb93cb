"""A spool in plain Python objects for the fleet simulator's agents.

``Spool(Path(":memory:"))`` is an SQLite connection of its own: ~75 KB per agent, 750 MB for 10,000
simulated agents. ``MemorySpool`` keeps the same API and ordering rules in dicts that exist only
once something is stored, so an agent that never spools costs a few hundred bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.spool import Spool
from libs.events.schemas.agent import Result

# (result, pending, finished_at) by command id, in insertion order (a re-recorded result moves last)
_Results = dict[str, tuple[Result, bool, float]]


class MemorySpool(Spool):
    """``Spool``'s behaviour without SQLite (nothing survives the process: right for a simulator)."""

    def __init__(
        self, *, max_heartbeats: int = 10_000, max_results: int = 1000, result_ttl_s: float = 7 * 86400.0
    ) -> None:
        # Spool.__init__ is skipped on purpose: it opens the SQLite connection this class avoids.
        self.path = Path(":memory:")
        self.max_heartbeats = max_heartbeats
        self.max_results = max_results
        self.result_ttl_s = result_ttl_s
        self._heartbeats: dict[int, dict[str, Any]] | None = None
        self._results: _Results | None = None
        self._next_id = 1
        self._dropped = 0

    def close(self) -> None:
        """Nothing to close."""

    def add_heartbeat(self, body: dict[str, Any]) -> int:
        """Keep one heartbeat body; returns how many old ones were dropped to stay in bounds."""
        if self._heartbeats is None:
            self._heartbeats = {}
        self._heartbeats[self._next_id] = body
        self._next_id += 1
        excess = len(self._heartbeats) - self.max_heartbeats
        for row_id in list(self._heartbeats)[: max(excess, 0)]:
            del self._heartbeats[row_id]
        self._dropped += max(excess, 0)
        return max(excess, 0)

    def oldest_heartbeats(self, limit: int) -> list[tuple[int, dict[str, Any]]]:
        """Up to ``limit`` spooled heartbeats, oldest first, as ``(id, body)``."""
        return list(self._heartbeats.items())[:limit] if self._heartbeats else []

    def delete_heartbeats(self, ids: Sequence[int], *, dropped: bool = False) -> None:
        """Forget these heartbeats (delivered, or ``dropped`` as undeliverable and counted)."""
        for row_id in ids:
            if self._heartbeats is not None:
                self._heartbeats.pop(row_id, None)
        if dropped:
            self._dropped += len(ids)

    def heartbeat_count(self) -> int:
        """Heartbeats in the spool."""
        return len(self._heartbeats) if self._heartbeats else 0

    @property
    def dropped(self) -> int:
        """Heartbeats dropped so far."""
        return self._dropped

    def record_result(self, result: Result, *, finished_at: float) -> None:
        """Remember that a command ran, pending until the server acknowledges it."""
        if self._results is None:
            self._results = {}
        self._results.pop(result.command_id, None)
        self._results[result.command_id] = (result, True, finished_at)

    def mark_delivered(self, command_id: str) -> None:
        """The server recorded this result."""
        if self._results and command_id in self._results:
            result, _, finished_at = self._results[command_id]
            self._results[command_id] = (result, False, finished_at)

    def pending_results(self) -> list[Result]:
        """Results not yet acknowledged, oldest first."""
        return [result for _, (result, pending, _) in self._ordered() if pending]

    def executed(self) -> dict[str, Result]:
        """Every remembered executed command id with its result, oldest first."""
        return {command_id: result for command_id, (result, _, _) in self._ordered()}

    def prune(self, *, now: float) -> int:
        """Forget delivered results older than the TTL or beyond the count; returns how many."""
        if not self._results:
            return 0
        delivered = [(cid, at) for cid, (_, pending, at) in self._ordered() if not pending]
        aged = {cid for cid, at in delivered if at < now - self.result_ttl_s}
        kept = [cid for cid, _ in delivered if cid not in aged]
        over = set(kept[: max(len(kept) - self.max_results, 0)])
        for command_id in aged | over:
            del self._results[command_id]
        return len(aged) + len(over)

    def _ordered(self) -> list[tuple[str, tuple[Result, bool, float]]]:
        """Results by finished_at, then insertion order (SQLite's ``ORDER BY finished_at, rowid``)."""
        return sorted(self._results.items(), key=lambda kv: kv[1][2]) if self._results else []
