"""Fixed-window rate limits in Redis, shared by every replica (checked before expensive work)."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

# INCR and set the window's expiry atomically; returns the count and the window's remaining ms.
_HIT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return {n, redis.call('PTTL', KEYS[1])}
"""
_PEEK = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
return {n, redis.call('PTTL', KEYS[1])}
"""


@dataclass(frozen=True)
class Verdict:
    """Whether an attempt is allowed, and when to retry if not (whole seconds, at least 1)."""

    allowed: bool
    count: int
    retry_after: int


class RateLimiter:
    """``limit`` attempts per ``window_s`` per key, counted in Redis under ``prefix``."""

    def __init__(self, redis: aioredis.Redis, prefix: str, *, limit: int, window_s: int) -> None:
        self._hit = redis.register_script(_HIT)
        self._peek = redis.register_script(_PEEK)
        self.prefix = prefix
        self.limit = limit
        self.window_ms = window_s * 1000

    async def hit(self, key: str) -> Verdict:
        """Count an attempt; refuse it when the window already holds ``limit``."""
        n, ttl = await self._hit(keys=[self.prefix + key], args=[self.window_ms])
        return self._verdict(int(n), int(ttl), over=int(n) > self.limit)

    async def check(self, key: str) -> Verdict:
        """Whether another attempt would be allowed, without counting one."""
        n, ttl = await self._peek(keys=[self.prefix + key], args=[])
        return self._verdict(int(n), int(ttl), over=int(n) >= self.limit)

    def _verdict(self, n: int, ttl_ms: int, *, over: bool) -> Verdict:
        retry = max(1, -(-max(ttl_ms, 0) // 1000)) if over else 0
        return Verdict(not over, n, retry)
