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
    # Presence defaults (a workspace's presence_workspaces row and a device's metadata override them).
    presence_interval_s: float = 30.0
    presence_timeout_s: float = 90.0
    # How often the sweeper looks for passed deadlines (offline is reported within this of the deadline).
    presence_sweep_s: float = 0.2
    # Deadlines are applied only this far behind the oldest heartbeat not yet handled (and behind now):
    # room for a request between its received_at and its stream entry. Offline is reported within
    # sweep + grace of the deadline.
    presence_grace_s: float = 0.25
    # A gateway that has not announced itself (gateway.alive.v1, every GATEWAY_BEACON_S) for this
    # long is taken for dead: its devices' sockets count as closed (offline, socket_closed).
    presence_gateway_timeout_s: float = 20.0
