"""Settings of the gateway service, from ``GATEWAY_*`` environment variables."""

from __future__ import annotations

from libs.events.settings import ServiceSettings


class Settings(ServiceSettings, kw_only=True, frozen=True):
    """Gateway settings; shared ones (``REDIS_URL``, ``DATABASE_URL``...) may come unprefixed."""

    port: int = 8000
    # Portal sockets: how often coalesced changes are sent, how often latest metrics are read, the
    # frames a slow portal may have queued before it is closed, and extra allowed browser origins
    # (same-origin is always allowed).
    portal_flush_s: float = 0.05
    portal_metrics_s: float = 2.0
    portal_pipeline_s: float = 5.0  # pipeline health frames (group lag, heartbeat -> portal latency)
    portal_max_queue: int = 5000
    portal_hello_timeout_s: float = 5.0
    portal_token_recheck_s: float = 30.0
    portal_allowed_origins: tuple[str, ...] = ()
    # Largest WebSocket message a device may send (bytes); a bigger one closes that socket (1009).
    max_frame_bytes: int = 65_536
    # Frames waiting to be written to one socket; a device that does not read closes with 1013.
    send_queue: int = 256
    # Inbound frames per device per second (0: no limit); frames over it are dropped, and a socket
    # sending more than `flood_factor` times the limit in one second is closed (1008).
    frame_rate_per_s: int = 20
    flood_factor: int = 5
    # WebSocket ping frames (protocol keepalive, answered by every client library): interval and how
    # long a pong may take before the socket is considered dead.
    ws_ping_interval_s: float = 20.0
    # permessage-deflate: off by default, it costs ~40 KB per idle socket (bench/gateway.py) for
    # frames of a few hundred bytes.
    ws_compression: bool = False
    ws_ping_timeout_s: float = 20.0
    # What the agent is told in `welcome` (its heartbeat period over the socket).
    heartbeat_interval_ms: int = 30_000
    # Seconds an agent has to send `hello` after the handshake.
    hello_timeout_s: float = 10.0
    # How often open sockets are checked against revocations (a revoked session, credential or device).
    revocation_check_s: float = 1.0
    # Commands whose result this gateway instance remembers (duplicate results are recognised).
    remember_finished: int = 100_000
    # How often this instance announces it is alive (gateway.alive.v1): presence drops the sockets of
    # a gateway whose announcements stop (DEVICE_PRESENCE_GATEWAY_TIMEOUT_S later).
    beacon_s: float = 5.0
