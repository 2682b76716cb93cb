"""Each dialect's result bodies and words, size limits, and the per-device rate (pure, no I/O).

S, K, W and the agent report results in their own words (``success``, ``completed``...); they are
mapped onto the lifecycle's outcomes here, with the device's word kept. HTTP bodies over a limit are
refused (413); results that come as events cannot be refused, so they are clipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

import msgspec

# Sizes (bytes of UTF-8 / encoded JSON). Bodies above MAX_BODY are refused before parsing.
MAX_BODY = 100 * 1024
MAX_OUTPUT = 10 * 1024
MAX_ERROR = 5 * 1024
MAX_RESULT = 64 * 1024
MAX_PARAMETERS = 16 * 1024
MAX_DEPTH = 16

Outcome = Literal["succeeded", "failed", "cancelled"]

# A device's word for its result -> the state it ends in (every dialect's words; unknown ones fail).
RESULT_WORDS: dict[str, Outcome] = {
    "success": "succeeded",
    "succeeded": "succeeded",
    "completed": "succeeded",
    "failure": "failed",
    "failed": "failed",
    "timeout": "failed",
    "error": "failed",
    "cancelled": "cancelled",
    "canceled": "cancelled",
}
S_WORDS = ("success", "failure", "timeout", "failed", "cancelled")
K_WORDS = ("completed", "failed")

T = TypeVar("T", bound=msgspec.Struct)


class DomainError(Exception):
    """A refused decision; ``kind`` is invalid, not_found, conflict, forbidden or too_large."""

    def __init__(self, kind: str, code: str, message: str) -> None:
        super().__init__(message)
        self.kind, self.code, self.message = kind, code, message


@dataclass(frozen=True)
class Report:
    """A device's result, already mapped: ``outcome`` in the vocabulary, the device's own word kept."""

    outcome: Outcome
    reported_status: str
    result: dict[str, Any] | None = None
    error: str | None = None
    output: str | None = None
    executed_at: datetime | None = None
    duration_ms: float | None = None


class SResult(msgspec.Struct, kw_only=True):
    """Dialect S ``POST /api/v1/device/commands/{id}/result``."""

    status: str
    executedAt: str | float | None = None  # the wire name
    duration: Annotated[float, msgspec.Meta(ge=0)] | None = None
    output: str | None = None
    error: str | None = None
    result: dict[str, Any] | None = None


class KStatus(msgspec.Struct, kw_only=True):
    """Dialect K ``PUT /api/v1/devices/{command_id}/status``."""

    status: str
    result: dict[str, Any] | None = None


def parse(cls: type[T], data: Any) -> T:
    """A body from decoded JSON; DomainError(invalid) for wrong shapes, types or values."""
    if not isinstance(data, dict):
        raise DomainError("invalid", "VALIDATION_ERROR", "the body must be a JSON object")
    check_values(data)
    try:
        return msgspec.convert(data, cls, strict=True)
    except msgspec.ValidationError as exc:
        raise DomainError("invalid", "VALIDATION_ERROR", str(exc)) from None


def check_values(value: Any, depth: int = 0) -> None:
    """Refuse NUL characters (Postgres cannot store them) and nesting deeper than MAX_DEPTH."""
    if depth > MAX_DEPTH:
        raise DomainError("invalid", "VALIDATION_ERROR", f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        if "\x00" in value:
            raise DomainError("invalid", "VALIDATION_ERROR", "strings must not contain NUL")
    elif isinstance(value, dict):
        for k, v in value.items():
            check_values(k, depth + 1)
            check_values(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            check_values(v, depth + 1)


_encoder = msgspec.json.Encoder(order="sorted")


def size(value: Any) -> int:
    """Bytes of ``value`` as stored (UTF-8 text, or encoded JSON)."""
    if value is None:
        return 0
    if isinstance(value, str):
        return len(value.encode())
    return len(_encoder.encode(value))


def too_large(what: str, limit: int) -> DomainError:
    """The refusal of a field over its size limit (HTTP 413)."""
    return DomainError("too_large", "PAYLOAD_TOO_LARGE", f"{what} over {limit} bytes")


# ---- results in each dialect's words --------------------------------------------------------------


def outcome_of(word: str) -> Outcome:
    """The state a device's result word ends in; an unknown word is a failure (the word is kept)."""
    return RESULT_WORDS.get(word.strip().lower(), "failed")


def aware(at: datetime) -> datetime:
    """A time with a zone (an event from a careless producer may carry a naive one: UTC)."""
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def parse_time(value: str | float | None) -> datetime | None:
    """An ISO 8601 time or epoch seconds/milliseconds (UTC if no zone); None if absent."""
    if value is None:
        return None
    try:
        if isinstance(value, str):
            at = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return at if at.tzinfo else at.replace(tzinfo=UTC)
        seconds = value / 1000 if value > 1e11 else value
        return datetime.fromtimestamp(seconds, UTC)
    except (ValueError, OverflowError, OSError):
        raise DomainError("invalid", "VALIDATION_ERROR", "executedAt: not a time") from None


def _bounded(output: str | None, error: str | None, result: dict[str, Any] | None) -> None:
    if size(output) > MAX_OUTPUT:
        raise too_large("output", MAX_OUTPUT)
    if size(error) > MAX_ERROR:
        raise too_large("error", MAX_ERROR)
    if size(result) > MAX_RESULT:
        raise too_large("result", MAX_RESULT)


def s_report(body: SResult) -> Report:
    """Dialect S's result: success -> succeeded; failure/failed/timeout -> failed; cancelled."""
    if body.status not in S_WORDS:
        raise DomainError("invalid", "VALIDATION_ERROR", f"status: one of {', '.join(S_WORDS)}")
    _bounded(body.output, body.error, body.result)
    return Report(
        outcome=outcome_of(body.status),
        reported_status=body.status,
        result=body.result,
        error=body.error,
        output=body.output,
        executed_at=parse_time(body.executedAt),
        duration_ms=body.duration,
    )


def k_report(body: KStatus) -> Report:
    """Dialect K's status: completed -> succeeded; failed (the result's ``error`` is kept)."""
    if body.status not in K_WORDS:
        raise DomainError("invalid", "VALIDATION_ERROR", f"status: one of {', '.join(K_WORDS)}")
    error = body.result.get("error") if body.result else None
    error = error if isinstance(error, str) else None
    _bounded(None, error, body.result)
    return Report(outcome_of(body.status), body.status, result=body.result, error=error)


def _clip(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    text = text.replace("\x00", "")  # Postgres text cannot hold NUL
    if size(text) <= limit:
        return text
    return text.encode()[:limit].decode(errors="ignore")


def _clean(value: Any) -> Any:
    """``value`` without NUL characters in any string or key (Postgres jsonb cannot hold them)."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def event_report(
    status: str,
    *,
    result: dict[str, Any] | None,
    error: str | None,
    output: str | None,
    executed_at: datetime | None,
    duration_ms: float | None,
) -> Report:
    """A result that came as an event: mapped like the HTTP dialects; oversized parts are clipped
    and NUL characters dropped (an event cannot be refused), and a result over its limit is
    replaced by a note of its size."""
    if result is not None and size(result) > MAX_RESULT:
        result = {"truncated": True, "bytes": size(result)}
    return Report(
        outcome=outcome_of(status),
        reported_status=_clip(status, 64) or "",
        result=_clean(result),
        error=_clip(error, MAX_ERROR),
        output=_clip(output, MAX_OUTPUT),
        executed_at=executed_at,
        duration_ms=duration_ms,
    )


# ---- per-device rate --------------------------------------------------------------------------------


class DeviceRateLimit:
    """At most ``limit`` requests per device per fixed window, counted in this process (0: no limit)."""

    def __init__(self, limit: int, window_s: float = 1.0) -> None:
        self.limit, self.window_s = limit, window_s
        self._window = -1
        self._counts: dict[str, int] = {}

    def allow(self, key: str, now: float) -> bool:
        """Count one request of ``key``; False when its window is already full."""
        if self.limit <= 0:
            return True
        window = int(now // self.window_s)
        if window != self._window:
            self._window, self._counts = window, {}
        n = self._counts.get(key, 0) + 1
        self._counts[key] = n
        return n <= self.limit
