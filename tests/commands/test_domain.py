"""The lifecycle's rules, pure: transitions, duplicates, TTL, idempotency, limits, dialect words."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from libs.events.schemas.commands import (
    CommandCancelled,
    CommandDelivered,
    CommandExpired,
    CommandFinished,
    CommandQueued,
    CommandSent,
)
from services.commands.dialects import (
    MAX_ERROR,
    MAX_OUTPUT,
    MAX_RESULT,
    DeviceRateLimit,
    DomainError,
    KStatus,
    Report,
    SResult,
    event_report,
    k_report,
    outcome_of,
    parse,
    parse_time,
    s_report,
)
from services.commands.domain import (
    Command,
    NewCommand,
    Ttl,
    check_retry,
    decide_cancel,
    decide_deliver,
    decide_expire,
    decide_queue,
    decide_result,
    decide_send,
    fingerprint,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
OK = Report("succeeded", "success", result={"exitCode": 0})
BAD = Report("failed", "timeout", error="took too long")


def queued(**kw: object) -> Command:
    cmd, _ = decide_queue(
        "c1", "ws", "dev", NewCommand(command_type="ping"), ttl=Ttl(), by="op", shape="operator", now=T0
    )
    return dataclasses.replace(cmd, **kw)  # type: ignore[arg-type]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_queue_sets_ttl_and_event() -> None:
    cmd, events = decide_queue(
        "c1",
        "ws",
        "dev",
        NewCommand(command_type="reboot", payload={"x": 1}, ttl_s=60),
        ttl=Ttl(),
        by="op",
        shape="operator",
        now=T0,
    )
    assert (cmd.state, cmd.status, cmd.k_status, cmd.expires_at) == ("queued", "pending", "pending", at(60))
    (e,) = events
    assert (
        isinstance(e, CommandQueued) and e.parameters == {"x": 1} and e.expires_at == at(60) and e.by == "op"
    )


def test_default_and_bounded_ttl() -> None:
    cmd, _ = decide_queue(
        "c", "ws", "d", NewCommand(command_type="p"), ttl=Ttl(3600, 7200), by="o", shape="o", now=T0
    )
    assert cmd.expires_at == at(3600)
    with pytest.raises(DomainError) as exc:
        decide_queue(
            "c",
            "ws",
            "d",
            NewCommand(command_type="p", ttl_s=7201),
            ttl=Ttl(3600, 7200),
            by="o",
            shape="o",
            now=T0,
        )
    assert exc.value.kind == "invalid"


def test_payload_and_parameters_are_one_thing() -> None:
    p = NewCommand(command_type="p", parameters={"a": 1})
    assert decide_queue("c", "w", "d", p, ttl=Ttl(), by="o", shape="o", now=T0)[0].parameters == {"a": 1}
    both = NewCommand(command_type="p", parameters={"a": 1}, payload={"a": 2})
    with pytest.raises(DomainError):
        decide_queue("c", "w", "d", both, ttl=Ttl(), by="o", shape="o", now=T0)
    huge = NewCommand(command_type="p", payload={"x": "y" * 20_000})
    with pytest.raises(DomainError) as exc:
        decide_queue("c", "w", "d", huge, ttl=Ttl(), by="o", shape="o", now=T0)
    assert exc.value.kind == "too_large"


# state, decision -> new state and event classes (None: refused with a conflict)
LIFECYCLE = [
    ("queued", "send", "sent", [CommandSent]),
    ("sent", "send", "sent", [CommandSent]),
    ("delivered", "send", "delivered", [CommandSent]),
    ("queued", "deliver", "delivered", [CommandDelivered]),
    ("sent", "deliver", "delivered", [CommandDelivered]),
    ("delivered", "deliver", "delivered", []),
    ("queued", "ok", "succeeded", [CommandFinished]),
    ("sent", "ok", "succeeded", [CommandFinished]),
    ("delivered", "bad", "failed", [CommandFinished]),
    ("queued", "cancel", "cancelled", [CommandCancelled]),
    ("delivered", "cancel", "cancelled", [CommandCancelled]),
    ("sent", "expire", "expired", [CommandExpired]),
    ("cancelled", "cancel", "cancelled", []),
    ("succeeded", "cancel", None, None),
    ("expired", "cancel", None, None),
] + [
    (terminal, step, terminal, [])
    for terminal in ("succeeded", "failed", "expired", "cancelled")
    for step in ("send", "deliver", "ok", "bad", "expire")
]


@pytest.mark.parametrize(("state", "step", "after", "emitted"), LIFECYCLE)
def test_lifecycle(state: str, step: str, after: str | None, emitted: list[type] | None) -> None:
    c = queued(state=state, attempts=0 if state == "queued" else 1)
    now = at(10) if step != "expire" else at(4000)
    try:
        if step == "send":
            new, events = decide_send(c, via="agent", now=now)
        elif step == "deliver":
            new, events = decide_deliver(c, now=now)
        elif step in ("ok", "bad"):
            new, events, _ = decide_result(c, OK if step == "ok" else BAD, via="s_http", now=now)
        elif step == "cancel":
            new, events = decide_cancel(c, by="op", now=now)
        else:
            new, events = decide_expire(c, now=now)
    except DomainError as exc:
        assert after is None and exc.kind == "conflict"
        return
    assert new.state == after
    assert [type(e) for e in events] == emitted


def test_resend_counts_attempts() -> None:
    c, (e1,) = decide_send(queued(), via="w_ws", now=at(1))
    c, (e2,) = decide_send(c, via="w_ws", now=at(2))
    assert isinstance(e2, CommandSent) and (e1.attempt, e2.attempt, c.attempts, c.sent_at) == (1, 2, 2, at(2))


def test_send_after_ttl_expires_instead() -> None:
    c, events = decide_send(queued(), via="k_poll", now=at(3600))
    assert c.state == "expired" and [type(e) for e in events] == [CommandExpired]


def test_expire_waits_for_the_deadline() -> None:
    assert decide_expire(queued(), now=at(3599)) == (queued(), [])


def test_first_result_is_final_later_ones_are_duplicates() -> None:
    c, events, verdict = decide_result(queued(state="sent"), BAD, via="s_http", now=at(5))
    assert (c.state, c.error, c.reported_status, verdict) == (
        "failed",
        "took too long",
        "timeout",
        "accepted",
    )
    (e,) = events
    assert isinstance(e, CommandFinished) and e.status == "failed" and e.reported_status == "timeout"
    again, events, verdict = decide_result(c, OK, via="s_http", now=at(6))
    assert (again, events, verdict) == (c, [], "duplicate")


def test_result_after_expiry_or_cancel_is_ignored() -> None:
    for state in ("expired", "cancelled"):
        c = queued(state=state)
        assert decide_result(c, OK, via="agent", now=at(1)) == (c, [], "ignored")


def test_device_cancelled_result_cancels() -> None:
    c, events, verdict = decide_result(queued(), Report("cancelled", "cancelled"), via="s_http", now=at(1))
    assert c.state == "cancelled" and c.status == "cancelled" and verdict == "accepted"
    assert isinstance(events[0], CommandCancelled) and events[0].by == "device:dev"


@pytest.mark.parametrize(
    ("word", "outcome"),
    [
        ("success", "succeeded"),
        ("failure", "failed"),
        ("failed", "failed"),
        ("timeout", "failed"),
        ("cancelled", "cancelled"),
        ("completed", "succeeded"),
        ("succeeded", "succeeded"),
        ("whatever", "failed"),
    ],
)
def test_result_words(word: str, outcome: str) -> None:
    assert outcome_of(word) == outcome


def test_vocabularies() -> None:
    views = {
        s: (queued(state=s).status, queued(state=s).k_status)
        for s in ("queued", "sent", "delivered", "succeeded", "failed", "expired", "cancelled")
    }
    assert views == {
        "queued": ("pending", "pending"),
        "sent": ("sent", "pending"),
        "delivered": ("sent", "pending"),
        "succeeded": ("completed", "completed"),
        "failed": ("failed", "failed"),
        "expired": ("expired", "expired"),
        "cancelled": ("cancelled", "cancelled"),
    }


def test_s_result_limits_and_words() -> None:
    r = s_report(parse(SResult, {"status": "success", "executedAt": "2026-01-01T12:00:00Z", "output": "ok"}))
    assert (r.outcome, r.output, r.executed_at) == ("succeeded", "ok", T0)
    assert s_report(parse(SResult, {"status": "timeout", "executedAt": 1767268800000})).executed_at == T0
    for body in (
        {"status": "success", "output": "x" * (MAX_OUTPUT + 1)},
        {"status": "failure", "error": "x" * (MAX_ERROR + 1)},
        {"status": "success", "result": {"stdout": "x" * MAX_RESULT}},
    ):
        with pytest.raises(DomainError) as exc:
            s_report(parse(SResult, body))
        assert exc.value.kind == "too_large"
    for body in (
        {"status": "done"},
        {"status": 1},
        {},
        {"status": "success", "executedAt": "yesterday"},
        {"status": "success", "duration": -1},
        {"status": "success", "output": "nul\x00"},
    ):
        with pytest.raises(DomainError) as exc:
            s_report(parse(SResult, body))
        assert exc.value.kind == "invalid"


def test_k_status_words_and_error() -> None:
    r = k_report(parse(KStatus, {"status": "failed", "result": {"error": "unknown command"}}))
    assert (r.outcome, r.error, r.reported_status) == ("failed", "unknown command", "failed")
    with pytest.raises(DomainError):
        k_report(parse(KStatus, {"status": "success"}))


def test_event_results_are_clipped_not_refused() -> None:
    r = event_report(
        "completed",
        result={"x": "y" * MAX_RESULT},
        error="e" * 9000,
        output="o" * 20_000,
        executed_at=None,
        duration_ms=None,
    )
    assert r.outcome == "succeeded" and r.result == {"truncated": True, "bytes": MAX_RESULT + 8}
    assert len(r.error or "") == MAX_ERROR and len(r.output or "") == MAX_OUTPUT


def test_idempotent_retry_must_match() -> None:
    cmd = NewCommand(command_type="p", payload={"a": 1}, idempotency_key="k")
    c, _ = decide_queue("c", "w", "d", cmd, ttl=Ttl(), by="o", shape="operator", now=T0)
    check_retry(c, fingerprint("operator", "d", cmd, 3600))
    for other in (
        fingerprint("operator", "d", NewCommand(command_type="p", payload={"a": 2}), 3600),
        fingerprint("operator", "d2", cmd, 3600),
        fingerprint("w", "d", cmd, 3600),
    ):
        with pytest.raises(DomainError) as exc:
            check_retry(c, other)
        assert exc.value.kind == "conflict"


def test_parse_time_forms() -> None:
    assert parse_time(None) is None
    assert parse_time(1767268800) == T0
    assert parse_time("2026-01-01T12:00:00") == T0


def test_rate_limit_per_device_and_window() -> None:
    lim = DeviceRateLimit(2)
    assert [lim.allow("a", 0.1), lim.allow("a", 0.2), lim.allow("a", 0.3), lim.allow("b", 0.4)] == [
        True,
        True,
        False,
        True,
    ]
    assert lim.allow("a", 1.1)


def test_event_results_lose_nul_characters() -> None:
    r = event_report(
        "fail\x00ed",
        result={"k\x00": ["v\x00"]},
        error="e\x00",
        output="o\x00",
        executed_at=None,
        duration_ms=None,
    )
    assert (r.reported_status, r.result, r.error, r.output) == ("failed", {"k": ["v"]}, "e", "o")
