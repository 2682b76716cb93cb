"""Settings of the commands service, from ``COMMANDS_*`` environment variables."""

from __future__ import annotations

from libs.events.settings import ServiceSettings


class Settings(ServiceSettings, kw_only=True, frozen=True):
    """Commands settings; shared ones (``REDIS_URL``, ``DATABASE_URL``...) may come unprefixed."""

    port: int = 8003
