"""The open-commands fold (pure): what is still waiting for a result, per device, oldest first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from libs.events.open_commands import OpenCommands, pushable
from libs.events.schemas.commands import (
    CommandCancelled,
    CommandDelivered,
    CommandExpired,
    CommandFinished,
    CommandQueued,
    CommandSent,
)

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def queued(cid: str, dev: str = "d1", *, at: float = 0, ttl: float = 3600) -> CommandQueued:
    created = T0 + timedelta(seconds=at)
    return CommandQueued(
        command_id=cid, device_id=dev, workspace_id="w", command_type="ping",
        created_at=created, expires_at=created + timedelta(seconds=ttl),
    )  # fmt: skip


def test_lifecycle_keeps_only_open_commands_oldest_first() -> None:
    view = OpenCommands()
    for e in (queued("b", at=2), queued("a", at=1), queued("x", dev="d2"), queued("short", at=3, ttl=5)):
        view.apply(e)
    ids = lambda **kw: [c.command_id for c in view.for_device("d1", T0 + timedelta(seconds=4), **kw)]  # noqa: E731
    assert ids() == ["a", "b", "short"]
    view.apply(CommandSent(command_id="a", device_id="d1", workspace_id="w", at=T0, via="agent", attempt=2))
    view.apply(CommandDelivered(command_id="b", device_id="d1", workspace_id="w", at=T0))
    assert ids(states=("queued",)) == ["short"] and view.get("a").attempts == 2  # type: ignore[union-attr]
    assert [c.command_id for c in view.for_device("d1", T0 + timedelta(seconds=9))] == [
        "a",
        "b",
    ]  # short expired
    view.apply(CommandFinished(command_id="a", device_id="d1", workspace_id="w", status="succeeded", at=T0))
    view.apply(CommandCancelled(command_id="b", device_id="d1", workspace_id="w", at=T0))
    view.apply(CommandExpired(command_id="short", device_id="d1", workspace_id="w", at=T0))
    assert ids() == [] and "d1" not in view.by_device and view.get("a") is None
    view.apply(CommandFinished(command_id="ghost", device_id="d1", workspace_id="w", status="failed", at=T0))
    assert [c.command_id for c in view.for_device("d2", T0)] == ["x"]


def test_a_gateway_book_keeps_open_commands_oldest_first_and_forgets_closed_ones() -> None:
    book = OpenCommands(remember=2)
    for event in (
        queued("late", at=5),
        queued("early"),
        queued("other", "d2"),
        queued("gone", at=-3600, ttl=60),
        queued("x1"),
        queued("x2"),
    ):
        book.apply(event)
    assert book.apply(queued("early")) is None  # redelivered
    book.apply(
        CommandSent(command_id="late", device_id="d1", workspace_id="w", at=T0, via="agent", attempt=3)
    )
    book.apply(CommandFinished(command_id="x1", device_id="d1", workspace_id="w", status="failed", at=T0))
    book.apply(CommandCancelled(command_id="x2", device_id="d1", workspace_id="w", at=T0))
    assert [c.command_id for c in book.pending("d1", T0)] == ["early", "late"]
    assert book.open["late"].attempts == 3 and book.open["late"].state == "sent"
    assert book.finished("x1") and not book.finished("x2")
    assert book.apply(queued("x2")) is None  # closed before its queued event was read
    book.apply(CommandExpired(command_id="late", device_id="d1", workspace_id="w", at=T0))
    assert [c.command_id for c in book.pending("d1", T0)] == ["early"]
    assert len(book.closed) == 2  # bounded memory of closed commands


def test_a_result_is_answered_once() -> None:
    book = OpenCommands()
    cmd = book.apply(queued("c1"))
    assert cmd is not None and pushable(cmd, T0)
    assert book.answer("c1") is True
    assert not pushable(cmd, T0)
    assert book.answer("c1") is False
    assert book.pending("d1", T0) == []  # answered: not pushed again on reconnect
