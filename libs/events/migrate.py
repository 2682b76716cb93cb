"""A migrations runner that owns one Postgres schema per service.

Files ``NNNN_name.sql`` run in name order, each in its own transaction, with ``search_path`` set
to the schema; the base migrations of libs/events (outbox, processed_events) run first. A session
advisory lock keeps concurrent replicas from migrating at once.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path

from .pg import Conn

BASE_DIR = Path(__file__).with_name("sql")
_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Migration:
    """One SQL file; ``name`` is namespaced (``events/0001_outbox``) so lib and service never clash."""

    name: str
    path: Path


def check_schema(schema: str) -> str:
    """Schema names are identifiers we interpolate; accept only plain lowercase names."""
    if not _SCHEMA_RE.match(schema):
        raise ValueError(f"invalid schema name {schema!r}")
    return schema


def discover(migrations_dir: Path | None) -> list[Migration]:
    """The base migrations then the service's, in order."""
    found = [Migration(f"events/{p.stem}", p) for p in sorted(BASE_DIR.glob("*.sql"))]
    if migrations_dir is not None and migrations_dir.is_dir():
        found += [Migration(f"service/{p.stem}", p) for p in sorted(migrations_dir.glob("*.sql"))]
    return found


async def _applied(conn: Conn, schema: str) -> set[str]:
    exists = await conn.fetchval(
        "SELECT 1 FROM information_schema.tables WHERE table_schema=$1 AND table_name='schema_migrations'",
        schema,
    )
    if not exists:
        return set()
    rows = await conn.fetch(f'SELECT name FROM "{schema}".schema_migrations')
    return {r[0] for r in rows}


async def pending(conn: Conn, schema: str, migrations_dir: Path | None) -> list[str]:
    """Names of migrations not yet applied (empty means the schema is current)."""
    done = await _applied(conn, check_schema(schema))
    return [m.name for m in discover(migrations_dir) if m.name not in done]


async def migrate(conn: Conn, schema: str, migrations_dir: Path | None) -> list[str]:
    """Create the schema if needed and apply pending migrations; returns what was applied."""
    check_schema(schema)
    lock = zlib.crc32(f"migrate:{schema}".encode())
    await conn.execute("SELECT pg_advisory_lock($1)", lock)
    try:
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations '
            "(name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = await _applied(conn, schema)
        applied = []
        for m in discover(migrations_dir):
            if m.name in done:
                continue
            async with conn.transaction():
                await conn.execute(f'SET LOCAL search_path TO "{schema}"')
                await conn.execute(m.path.read_text())
                await conn.execute(f'INSERT INTO "{schema}".schema_migrations (name) VALUES ($1)', m.name)
            applied.append(m.name)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", lock)
