"""docs/events.md is the catalog rendered from the schema registry, never edited by hand."""

from __future__ import annotations

from pathlib import Path

from libs.events.catalog import render_markdown
from libs.events.schemas import REGISTRY

DOC = Path(__file__).resolve().parents[2] / "docs" / "events.md"


def test_events_doc_matches_registry() -> None:
    """The committed catalog equals what the registry renders today."""
    assert DOC.exists(), "docs/events.md is missing: run `python -m libs.events.catalog > docs/events.md`"
    assert DOC.read_text() == render_markdown(REGISTRY), (
        "docs/events.md is out of date with libs/events/schemas: "
        "regenerate it with `python -m libs.events.catalog > docs/events.md` and commit it"
    )


def test_catalog_lists_every_tag_with_its_class() -> None:
    """Each tag has a section naming its class."""
    text = render_markdown(REGISTRY)
    for tag, cls in REGISTRY.items():
        assert f"### `{tag}`" in text
        assert cls.__qualname__ in text
