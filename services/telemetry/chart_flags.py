"""Which points of a raw chart were backfilled (replayed by the agent after an outage, not live).

A use-case beside ``handlers.Charts`` (it belongs there; kept apart while that module is being
reworked): the series answer is unchanged, and the route adds ``backfilled`` next to it.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

from libs.events.service import ServiceHost

from . import store as db
from .domain import ChartQuery


async def backfilled_points(
    host: ServiceHost, device_id: str, workspace_id: str, q: ChartQuery, series: dict[str, Any]
) -> dict[str, list[str]]:
    """``{name: [iso time, ...]}`` of the points of ``series`` (a raw chart) that were backfilled.

    Only times the series shows are listed (it keeps the first points of each metric, and a row
    written between the two reads is in one of them only).
    """
    assert host.pool is not None
    async with host.pool.acquire() as conn:
        rows = await db.backfilled(conn, device_id, workspace_id, (q.start, q.end), name=q.name)
    shown = {name: {point[0] for point in points} for name, points in series.items()}
    out: dict[str, list[str]] = {}
    for name, at in rows:
        iso = at.astimezone(UTC).isoformat()
        if iso in shown.get(name, ()):
            out.setdefault(name, []).append(iso)
    return out
