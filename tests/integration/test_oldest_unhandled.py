"""oldest_unhandled_ms: the time up to which a group has handled its stream (presence's horizon)."""

from __future__ import annotations

import redis.asyncio as aioredis

from libs.events.stats import oldest_unhandled_ms


async def test_follows_pending_and_undelivered_entries(r: aioredis.Redis, prefix: str) -> None:
    stream, group = prefix + "s", "g"
    assert await oldest_unhandled_ms(r, stream, group) is None  # no stream
    for ms in (1000, 2000, 3000):
        await r.xadd(stream, {"k": "v"}, id=f"{ms}-0")
    assert await oldest_unhandled_ms(r, stream, group) == 1000  # no group yet: from the first entry
    await r.xgroup_create(stream, group, id="0")
    assert await oldest_unhandled_ms(r, stream, group) == 1000  # nothing delivered
    await r.xreadgroup(group, "c1", {stream: ">"}, count=2)
    assert await oldest_unhandled_ms(r, stream, group) == 1000  # delivered, pending
    await r.xack(stream, group, "2000-0")
    assert await oldest_unhandled_ms(r, stream, group) == 1000  # acknowledged out of order
    await r.xack(stream, group, "1000-0")
    assert await oldest_unhandled_ms(r, stream, group) == 3000  # the next never delivered
    await r.xreadgroup(group, "c1", {stream: ">"})
    assert await oldest_unhandled_ms(r, stream, group) == 3000
    await r.xack(stream, group, "3000-0")
    assert await oldest_unhandled_ms(r, stream, group) is None  # all handled
    await r.xadd(stream, {"k": "v"}, id="4000-5")
    assert await oldest_unhandled_ms(r, stream, group) == 4000


async def test_a_group_created_at_the_end_has_nothing_unhandled(r: aioredis.Redis, prefix: str) -> None:
    stream = prefix + "s"
    await r.xadd(stream, {"k": "v"}, id="1000-0")
    await r.xgroup_create(stream, "g", id="$")
    assert await oldest_unhandled_ms(r, stream, "g") is None
