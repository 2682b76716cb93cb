"""Golden samples: every event tag has a recorded envelope that must keep decoding (DESIGN.md §3).

The files under ``golden/`` are written by hand (or once, from ``to_jsonable(new_envelope(...))``
with fixed ids and times) and committed. This test only reads them: never regenerate a golden file
to make it pass. A breaking change is a new ``.v2`` class with a new golden file; ``v1`` stays.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from libs.events.envelope import decode_envelope, decode_event, to_jsonable
from libs.events.schemas import REGISTRY, tag_of

GOLDEN_DIR = Path(__file__).with_name("golden")
GOLDEN_FILES = sorted(GOLDEN_DIR.glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    """A golden file as plain JSON."""
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def optional_fields(cls: type[Any]) -> set[str]:
    """Encoded names of the fields of an event class that have a default."""
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    return {f.encode_name for f in info.fields if not f.required}


def test_every_registry_tag_has_a_golden_file() -> None:
    """A new tag ships with its golden sample."""
    missing = sorted(set(REGISTRY) - {p.stem for p in GOLDEN_FILES})
    assert not missing, f"add tests/contract/golden/<tag>.json for: {', '.join(missing)}"


def test_every_golden_file_is_a_registry_tag() -> None:
    """Old tags stay in the registry forever; a golden file never outlives its class."""
    unknown = sorted({p.stem for p in GOLDEN_FILES} - set(REGISTRY))
    assert not unknown, f"golden files whose tag left the registry: {', '.join(unknown)}"


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: p.stem)
def test_golden_file_decodes_to_its_tag(path: Path) -> None:
    """The stored envelope decodes, and its data decodes into the class of the file's tag."""
    envelope = decode_envelope(json.dumps(load(path)).encode())
    event = decode_event(envelope, REGISTRY)
    assert envelope.type == path.stem
    assert tag_of(type(event)) == path.stem


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: p.stem)
def test_golden_data_round_trips(path: Path) -> None:
    """Re-encoding the decoded event gives back the golden data: names and values are stable.

    Fields added later (with a default, as the rules demand) may appear in addition; nothing else.
    """
    golden = load(path)
    event = decode_event(decode_envelope(json.dumps(golden).encode()), REGISTRY)
    encoded = msgspec.json.decode(msgspec.json.encode(event))
    assert {k: encoded.get(k) for k in golden["data"]} == golden["data"]
    added = set(encoded) - set(golden["data"])
    assert added <= optional_fields(type(event)), f"new required fields in a v1 class: {added}"


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: p.stem)
def test_to_jsonable_reproduces_golden(path: Path) -> None:
    """``to_jsonable`` (what replay prints) renders a decoded envelope exactly as the golden file."""
    golden = load(path)
    assert to_jsonable(decode_envelope(json.dumps(golden).encode())) == golden
