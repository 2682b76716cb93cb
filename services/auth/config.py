"""Settings of the auth service, from ``AUTH_*`` environment variables."""

from __future__ import annotations

from libs.events.settings import ServiceSettings


class Settings(ServiceSettings, kw_only=True, frozen=True):
    """Auth settings; shared ones (``REDIS_URL``, ``SIGNING_KEY``...) may come unprefixed."""

    port: int = 8001
    # Sessions
    operator_session_ttl_s: int = 8 * 3600
    device_session_ttl_s: int = 86_400
    # Rate limits (fixed windows in Redis, checked before any hashing)
    login_account_limit: int = 10
    login_account_window_s: int = 60
    login_address_limit: int = 30
    login_address_window_s: int = 60
    device_auth_limit: int = 20
    device_auth_window_s: int = 60
    device_auth_address_limit: int = 300
    device_auth_address_window_s: int = 60
    # argon2id cost (RFC 9106 "second recommended" defaults; tests lower them)
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65_536
    argon2_parallelism: int = 4
