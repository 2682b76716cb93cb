"""The envelope every stream entry carries, and the encoding of stream entries.

A stream entry has exactly two fields: ``type`` (the event tag, for cheap filtering) and
``envelope`` (the envelope as JSON, whose ``data`` is the encoded event).
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any

import msgspec

from .schemas import Event, Registry, tag_of

TYPE_FIELD = b"type"
ENVELOPE_FIELD = b"envelope"


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """Metadata around one event; ``id`` is the deduplication key everywhere."""

    id: str
    type: str
    occurred_at: datetime
    producer: str
    data: msgspec.Raw
    correlation_id: str | None = None
    causation_id: str | None = None
    device_id: str | None = None
    headers: dict[str, str] = {}


class UndecodableEntry(ValueError):
    """A stream entry that is not a valid envelope (it goes to the DLQ at once)."""


class UnknownEventType(LookupError):
    """An envelope whose type this registry does not know (consumers skip it)."""


def new_id() -> str:
    """A UUIDv7 (RFC 9562): unique, and time-ordered so id indexes stay append-mostly."""
    b = bytearray((time.time_ns() // 1_000_000).to_bytes(6, "big") + os.urandom(10))
    b[6] = 0x70 | (b[6] & 0x0F)  # version 7
    b[8] = 0x80 | (b[8] & 0x3F)  # RFC 9562 variant
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def entry_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id as a sortable ``(ms, seq)`` pair."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


_encoder = msgspec.json.Encoder()
_envelope_decoder = msgspec.json.Decoder(Envelope)
_event_decoders: dict[type[Event], msgspec.json.Decoder[Any]] = {}


def new_envelope(
    event: Event,
    *,
    producer: str,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    device_id: str | None = None,
    headers: dict[str, str] | None = None,
    occurred_at: datetime | None = None,
    envelope_id: str | None = None,
) -> Envelope:
    """Wrap an event; the device id defaults to the event's ``device_id`` field when it has one."""
    if device_id is None:
        device_id = getattr(event, "device_id", None)
    return Envelope(
        id=envelope_id or new_id(),
        type=tag_of(type(event)),
        occurred_at=occurred_at or datetime.now(UTC),
        producer=producer,
        correlation_id=correlation_id,
        causation_id=causation_id,
        device_id=device_id,
        headers=headers or {},
        data=msgspec.Raw(_encoder.encode(event)),
    )


def encode_envelope(envelope: Envelope) -> bytes:
    """The envelope as JSON bytes."""
    return _encoder.encode(envelope)


def decode_envelope(raw: bytes | str) -> Envelope:
    """Parse envelope JSON, raising UndecodableEntry on any malformation."""
    try:
        return _envelope_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UndecodableEntry(str(exc)) from exc


def entry_fields(envelope: Envelope) -> dict[bytes, bytes]:
    """The two fields of the stream entry for an envelope."""
    return {TYPE_FIELD: envelope.type.encode(), ENVELOPE_FIELD: encode_envelope(envelope)}


def decode_entry(fields: dict[bytes, bytes]) -> Envelope:
    """Decode a raw stream entry (as returned by redis-py with bytes) into its envelope."""
    raw = fields.get(ENVELOPE_FIELD)
    if raw is None:
        raise UndecodableEntry("entry has no 'envelope' field")
    return decode_envelope(raw)


def decode_event(envelope: Envelope, registry: Registry) -> Event:
    """Decode the envelope's data into its event class from the registry."""
    cls = registry.get(envelope.type)
    if cls is None:
        raise UnknownEventType(envelope.type)
    decoder = _event_decoders.get(cls)
    if decoder is None:
        decoder = _event_decoders[cls] = msgspec.json.Decoder(cls)
    try:
        event: Event = decoder.decode(envelope.data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UndecodableEntry(f"{envelope.type}: {exc}") from exc
    return event


def to_jsonable(envelope: Envelope) -> dict[str, Any]:
    """The envelope with its data decoded as plain JSON (for replay output and debugging)."""
    out: dict[str, Any] = msgspec.json.decode(_encoder.encode(envelope))
    return out
