"""Settings of the device service, from ``DEVICE_*`` environment variables."""

from __future__ import annotations

from libs.events.settings import ServiceSettings


class Settings(ServiceSettings, kw_only=True, frozen=True):
    """Device settings; shared ones (``REDIS_URL``, ``DATABASE_URL``...) may come unprefixed."""

    port: int = 8004
    # Known device types (documentation and clients' pickers); any lowercase [a-z0-9_]{1,32} is accepted.
    device_types: tuple[str, ...] = ("arduino", "esp32", "raspberry_pi", "linux_server", "virtual")
    # Unauthenticated (open enrolment) registrations allowed per client address per minute.
    enrol_per_minute: int = 30
