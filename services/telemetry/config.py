"""Settings of the telemetry service, from ``TELEMETRY_*`` environment variables."""

from __future__ import annotations

from libs.events.settings import ServiceSettings


class Settings(ServiceSettings, kw_only=True, frozen=True):
    """Telemetry settings; shared ones (``REDIS_URL``, ``DATABASE_URL``...) may come unprefixed."""

    port: int = 8002
    # the interval devices are told to adopt (``nextHeartbeat``, ms)
    heartbeat_interval_ms: int = 30_000
    # ingestion bodies above this are 413 (the app-wide limit is larger)
    ingest_max_body_bytes: int = 100_000
    # how long a device's latest metrics stay cached after its last heartbeat
    latest_ttl_s: int = 300
    # heartbeats per device per second, counted per process (0: no limit); 429 above
    device_rate_per_s: int = 10
    # dialect K requests with an API key not in the identity index, per client address per second,
    # counted per process (0: no limit); 429 above, before the index is re-read from Redis
    unknown_key_rate_per_s: int = 10
    # stream appends shared by concurrent requests
    batch_max: int = 500
    batch_max_delay_s: float = 0.002
    # a heartbeat not yet sent to Redis this long after it arrived is withdrawn and answered 503;
    # one Redis already has is waited for up to the hard cap (then 504: it may be written)
    batch_send_timeout_s: float = 5.0
    batch_hard_timeout_s: float = 30.0
    # time-series retention, per table (hours), and how often old rows are deleted
    raw_retention_h: float = 168
    rollup_1m_retention_h: float = 720
    rollup_1h_retention_h: float = 8760
    timeseries_expiry_interval_s: float = 60
    # the longest window a raw chart query may cover (hours; longer is 422, use a rollup step)
    chart_raw_max_span_h: float = 24
