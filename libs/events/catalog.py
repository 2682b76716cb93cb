"""The event catalog: docs/events.md rendered from the schema registry with ``msgspec.inspect``.

Regenerate with ``python -m libs.events.catalog > docs/events.md``; a unit test keeps the committed
file equal to what this module renders. Imports only the schemas, msgspec and the standard library.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterable

import msgspec
from msgspec import inspect as mi

from .schemas import REGISTRY, Event, Registry

INTRO = """\
# Event catalog

Generated from `libs.events.schemas.REGISTRY` by `python -m libs.events.catalog > docs/events.md`.
Do not edit by hand: `tests/unit/test_events_doc.py` fails when this file and the schemas differ.

## Envelope

Every event travels inside an envelope (`libs/events/envelope.py`):

| field | type | meaning |
|---|---|---|
| `id` | `str` (UUID) | unique per event; the deduplication key (`processed_events`, outbox relay) |
| `type` | `str` | the event's versioned tag, e.g. `device.registered.v1` |
| `occurred_at` | `datetime` (UTC) | when the producer created the event |
| `producer` | `str` | the producing service |
| `data` | JSON object | the encoded event; its `type` member repeats the tag |
| `correlation_id` | `str \\| None` | ties together the events of one request or flow |
| `causation_id` | `str \\| None` | the id of the envelope that caused this one |
| `device_id` | `str \\| None` | the device concerned; defaults to the event's `device_id` field |
| `headers` | `dict[str, str]` | W3C trace context (`traceparent`) |

## Stream entries

A stream entry has exactly two fields: `type` (the tag, so readers can filter without decoding) and
`envelope` (the envelope as JSON).

## Versioning

- Events are frozen `msgspec.Struct`s tagged `<service>.<name>.v<N>`, one module per producing service.
- Add a field only with a default; a breaking change is a new class with the next version tag.
- Old classes stay in the registry and decodable forever; `tests/contract/golden/<tag>.json` holds a
  sample of every tag that must keep decoding.
"""

_SIMPLE: dict[type[mi.Type], str] = {
    mi.AnyType: "Any",
    mi.NoneType: "None",
    mi.BoolType: "bool",
    mi.IntType: "int",
    mi.FloatType: "float",
    mi.StrType: "str",
    mi.BytesType: "bytes",
    mi.ByteArrayType: "bytearray",
    mi.MemoryViewType: "memoryview",
    mi.DateTimeType: "datetime",
    mi.DateType: "date",
    mi.TimeType: "time",
    mi.TimeDeltaType: "timedelta",
    mi.UUIDType: "UUID",
    mi.DecimalType: "Decimal",
    mi.RawType: "Raw",
}

_COLLECTIONS: dict[type[mi.Type], str] = {
    mi.ListType: "list",
    mi.SetType: "set",
    mi.FrozenSetType: "frozenset",
}


def type_name(t: mi.Type) -> str:
    """A Python-style spelling of an inspected msgspec type (``dict[str, int | None]``)."""
    if type(t) in _SIMPLE:
        return _SIMPLE[type(t)]
    if isinstance(t, mi.UnionType):
        return " | ".join(type_name(u) for u in t.types)
    if isinstance(t, mi.DictType):
        return f"dict[{type_name(t.key_type)}, {type_name(t.value_type)}]"
    if isinstance(t, mi.ListType | mi.SetType | mi.FrozenSetType):
        return f"{_COLLECTIONS[type(t)]}[{type_name(t.item_type)}]"
    if isinstance(t, mi.VarTupleType):
        return f"tuple[{type_name(t.item_type)}, ...]"
    if isinstance(t, mi.TupleType):
        return f"tuple[{', '.join(type_name(i) for i in t.item_types)}]"
    if isinstance(t, mi.LiteralType):
        return f"Literal[{', '.join(repr(v) for v in t.values)}]"
    if isinstance(t, mi.Metadata):
        return type_name(t.type)
    return _named(t)


def _named(t: mi.Type) -> str:
    """Types that refer to a class (struct, enum, dataclass...) by the class's name."""
    cls = getattr(t, "cls", None)
    return cls.__name__ if isinstance(cls, type) else type(t).__name__.removesuffix("Type")


def default_text(field: mi.Field) -> str:
    """``required``, or the default as it appears on the wire (JSON)."""
    if field.required:
        return "required"
    value = field.default if field.default is not msgspec.NODEFAULT else field.default_factory()
    return f"default `{msgspec.json.encode(value).decode()}`"


def _cell(text: str) -> str:
    """Escape a table cell (union types contain ``|``)."""
    return text.replace("|", "\\|")


def field_table(cls: type[Event]) -> list[str]:
    """The markdown table of an event class's fields, in declaration order."""
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    lines = ["| field | type | required / default |", "|---|---|---|"]
    for f in info.fields:
        lines.append(f"| `{f.encode_name}` | `{_cell(type_name(f.type))}` | {default_text(f)} |")
    return lines


def _docstring(obj: object) -> str:
    """The object's own docstring, dedented (not one inherited from a base class)."""
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if isinstance(doc, str) else "(no docstring)"


def render_event(tag: str, cls: type[Event]) -> list[str]:
    """One event's section: tag, class, docstring and field table."""
    head = [f"### `{tag}`", "", f"Class `{cls.__module__}.{cls.__qualname__}`.", ""]
    return [*head, _docstring(cls), "", *field_table(cls), ""]


def render_service(service: str, events: Iterable[tuple[str, type[Event]]]) -> list[str]:
    """A producing service's section: its schema module's docstring, then each event."""
    items = sorted(events, key=lambda item: item[0])
    module = sys.modules.get(items[0][1].__module__)
    lines = [f"## {service}", ""]
    if module is not None and module.__doc__:
        lines += [inspect.cleandoc(module.__doc__), ""]
    for tag, cls in items:
        lines += render_event(tag, cls)
    return lines


def by_service(registry: Registry) -> dict[str, list[tuple[str, type[Event]]]]:
    """Registry entries grouped by producing service (the tag's first segment), sorted."""
    groups: dict[str, list[tuple[str, type[Event]]]] = {}
    for tag, cls in registry.items():
        groups.setdefault(tag.split(".", 1)[0], []).append((tag, cls))
    return dict(sorted(groups.items()))


def render_markdown(registry: Registry) -> str:
    """The whole catalog as markdown (the content of docs/events.md)."""
    lines = [INTRO]
    for service, events in by_service(registry).items():
        lines += render_service(service, events)
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> None:
    """Print the catalog of the platform's registry."""
    sys.stdout.write(render_markdown(REGISTRY))


if __name__ == "__main__":
    main()
