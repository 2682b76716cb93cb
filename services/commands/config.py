"""Settings of the commands service, from ``COMMANDS_*`` environment variables."""

from __future__ import annotations

from libs.events.settings import ServiceSettings


class Settings(ServiceSettings, kw_only=True, frozen=True):
    """Commands settings; shared ones (``REDIS_URL``, ``DATABASE_URL``...) may come unprefixed."""

    port: int = 8003
    # a command's TTL when it names none, and the longest one it may name (seconds)
    default_ttl_s: int = 3600
    max_ttl_s: int = 7 * 86400
    # how often the sweeper expires commands past their TTL (they expire within this of the deadline)
    sweep_s: float = 0.2
    # device requests (K polls, K/S results) per device per second, counted per process (0: no limit)
    device_rate_per_s: int = 10
    # the most commands one K poll lists (oldest first; the rest follow once these finish)
    pending_limit: int = 100
