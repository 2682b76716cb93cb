"""The open commands per device (queued, sent or delivered), folded from ``events:commands`` (pure).

Services that hand commands to devices outside the commands service (the S heartbeat answer,
gateway sockets) ask it what is still open for a device, oldest first; ``open_commands_feed`` keeps
it current. Memory holds the open commands and the ids of the last ``remember`` closed ones (to
refuse a duplicate result).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .schemas.commands import (
    CommandCancelled,
    CommandDelivered,
    CommandExpired,
    CommandFinished,
    CommandQueued,
    CommandSent,
)


@dataclass
class OpenCommand:
    """A command still waiting for its result."""

    command_id: str
    device_id: str
    workspace_id: str
    command_type: str
    parameters: dict[str, Any]
    created_at: datetime
    expires_at: datetime
    order: int = 0  # arrival order: breaks ties between equal ``created_at``
    state: str = "queued"
    attempts: int = 0  # the highest attempt sent so far (CommandSent events and local pushes)
    answered: bool = False  # a result came through this process (a gateway socket): not pushed again


@dataclass
class OpenCommands:
    """Open commands per device, folded from the lifecycle events (pure); remembers closed ones.

    ``closed`` (bounded by ``remember``) answers "was a result already recorded?" for a late or
    duplicate result, and keeps a ``command.queued`` read after the command closed from reopening it.
    """

    remember: int = 100_000
    open: dict[str, OpenCommand] = field(default_factory=dict)
    by_device: dict[str, dict[str, OpenCommand]] = field(default_factory=dict)
    closed: dict[str, str] = field(default_factory=dict)  # command id -> finished|expired|cancelled
    _order: int = 0

    def apply(self, event: Any) -> OpenCommand | None:
        """Fold one event (others are ignored); returns the command if it is newly queued."""
        if isinstance(event, CommandQueued):
            return self._queued(event)
        cmd = self.open.get(getattr(event, "command_id", ""))
        if isinstance(event, CommandSent) and cmd is not None:
            cmd.state = "sent" if cmd.state == "queued" else cmd.state
            cmd.attempts = max(cmd.attempts, event.attempt)
        elif isinstance(event, CommandDelivered) and cmd is not None:
            cmd.state = "delivered"
        elif isinstance(event, CommandFinished):
            self._close(event.command_id, "finished")
        elif isinstance(event, CommandExpired):
            self._close(event.command_id, "expired")
        elif isinstance(event, CommandCancelled):
            self._close(event.command_id, "cancelled")
        return None

    def _queued(self, e: CommandQueued) -> OpenCommand | None:
        if e.command_id in self.open or e.command_id in self.closed:
            return None  # a redelivery, or a command closed before its queued event was read
        self._order += 1
        cmd = OpenCommand(
            e.command_id,
            e.device_id,
            e.workspace_id,
            e.command_type,
            dict(e.parameters),
            _aware(e.created_at),
            _aware(e.expires_at),
            self._order,
        )
        self.open[cmd.command_id] = cmd
        self.by_device.setdefault(cmd.device_id, {})[cmd.command_id] = cmd
        return cmd

    def _close(self, command_id: str, how: str) -> None:
        cmd = self.open.pop(command_id, None)
        if cmd is not None:
            mine = self.by_device.get(cmd.device_id, {})
            mine.pop(command_id, None)
            if not mine:
                self.by_device.pop(cmd.device_id, None)
        self.closed[command_id] = how
        while len(self.closed) > self.remember:
            del self.closed[next(iter(self.closed))]

    def get(self, command_id: str) -> OpenCommand | None:
        """An open command by id."""
        return self.open.get(command_id)

    def for_device(self, device_id: str, now: datetime, *, states: Sequence[str] = ()) -> list[OpenCommand]:
        """A device's open commands not yet expired (optionally only in ``states``), oldest first."""
        found = [
            c
            for c in self.by_device.get(device_id, {}).values()
            if c.expires_at > now and (not states or c.state in states)
        ]
        return sorted(found, key=lambda c: (c.created_at, c.order))

    def pending(self, device_id: str, now: datetime) -> list[OpenCommand]:
        """The device's commands to push on connect, oldest first (no answered or expired ones)."""
        return [c for c in self.for_device(device_id, now) if not c.answered]

    def finished(self, command_id: str) -> bool:
        """Whether a result for this command was already recorded (by any transport)."""
        return self.closed.get(command_id) == "finished"

    def answer(self, command_id: str) -> bool:
        """Note a result seen here; False if one was seen or recorded before (a duplicate)."""
        cmd = self.open.get(command_id)
        if self.finished(command_id) or (cmd is not None and cmd.answered):
            return False
        if cmd is not None:
            cmd.answered = True
        return True


def pushable(cmd: OpenCommand, now: datetime) -> bool:
    """Whether a command may go to the device now: open, unanswered and not past its expiry."""
    return not cmd.answered and cmd.expires_at > now


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)
