"""The base of every event: a frozen, tagged msgspec Struct."""

from __future__ import annotations

import msgspec


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base class of every event; subclasses set ``tag="<service>.<name>.v<N>"``.

    Rules (DESIGN.md §3): add a field only with a default; a breaking change is a new class with
    the next version tag; old classes stay decodable forever.
    """


def tag_of(cls: type[Event]) -> str:
    """The versioned tag of an event class."""
    tag = cls.__struct_config__.tag
    if not isinstance(tag, str):
        raise TypeError(f"{cls.__name__} has no string tag")
    return tag
