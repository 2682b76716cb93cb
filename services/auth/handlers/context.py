"""What every use-case needs: the host, password hashing and rate limits."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import cast

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from libs.events.http import Identity
from libs.events.ratelimit import RateLimiter
from libs.events.service import ServiceHost

from .. import domain as d
from ..config import Settings
from ..store import Store, Tx


class Passwords:
    """argon2id hashing, run off the event loop (a hash costs tens of milliseconds)."""

    def __init__(self, settings: Settings) -> None:
        self._ph = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
            type=Type.ID,
        )
        self._dummy: str | None = None

    async def hash(self, password: str) -> str:
        """A new argon2id hash."""
        return await asyncio.to_thread(self._ph.hash, password)

    async def verify(self, password_hash: str, password: str) -> bool:
        """Whether the password matches the hash."""
        return await asyncio.to_thread(self._check, password_hash, password)

    def _check(self, password_hash: str, password: str) -> bool:
        try:
            return self._ph.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        """Whether the hash was made with other parameters than today's."""
        try:
            return self._ph.check_needs_rehash(password_hash)
        except InvalidHashError:
            return True

    async def dummy_verify(self, password: str) -> None:
        """Spend what a real verify costs (unknown accounts answer in the same time)."""
        if self._dummy is None:
            self._dummy = await self.hash(secrets.token_hex(16))
        await self.verify(self._dummy, password)


def limit_key(value: str) -> str:
    """A short, fixed-size rate-limit key (no emails or raw client input in Redis key names)."""
    return hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()[:32]


class Limits:
    """The service's rate limiters (Redis fixed windows under ``<prefix>auth:rl:``)."""

    def __init__(self, host: ServiceHost, s: Settings) -> None:
        assert host.redis is not None
        self._redis, p = host.redis, f"{s.stream_prefix}auth:rl:"
        rl = RateLimiter
        self.login_account = rl(
            host.redis, p + "login:acct:", limit=s.login_account_limit, window_s=s.login_account_window_s
        )
        self.login_address = rl(
            host.redis, p + "login:addr:", limit=s.login_address_limit, window_s=s.login_address_window_s
        )
        self.password = rl(
            host.redis, p + "pw:acct:", limit=s.login_account_limit, window_s=s.login_account_window_s
        )
        self.device = rl(
            host.redis, p + "dev:id:", limit=s.device_auth_limit, window_s=s.device_auth_window_s
        )
        self.device_address = rl(
            host.redis,
            p + "dev:addr:",
            limit=s.device_auth_address_limit,
            window_s=s.device_auth_address_window_s,
        )

    async def enforce(self, *checks: tuple[RateLimiter, str]) -> None:
        """Count one attempt against each limiter; RateLimited at the first one over its limit."""
        for limiter, key in checks:
            verdict = await limiter.hit(limit_key(key))
            if not verdict.allowed:
                raise d.RateLimited(verdict.retry_after)

    async def reset(self, limiter: RateLimiter, key: str) -> None:
        """Forget the attempts counted for a key."""
        await self._redis.delete(limiter.prefix + limit_key(key))


@dataclass
class Auth:
    """Everything the use-cases need, built lazily from a started host."""

    host: ServiceHost
    passwords: Passwords

    @property
    def settings(self) -> Settings:
        """The auth settings."""
        return cast(Settings, self.host.settings)

    @property
    def identity(self) -> Identity:
        """Token signing and the identity index."""
        assert self.host.identity is not None, "the auth service needs identity=True"
        return self.host.identity

    @cached_property
    def store(self) -> Store:
        """Transactions with the outbox."""
        assert self.host.pool is not None and self.host.redis is not None
        return Store(self.host.pool, self.host.redis, self.host.stream("events:auth"))

    @cached_property
    def limits(self) -> Limits:
        """Rate limiters."""
        return Limits(self.host, self.settings)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """A store transaction; after it, this process's identity index reads the new events."""
        async with self.store.transaction() as tx:
            yield tx
        if tx.envelopes:
            await self.identity.feed.catch_up()


def now_utc() -> datetime:
    """The current time (the one clock read of a use-case)."""
    return datetime.now(UTC)


def is_uuid(value: str) -> bool:
    """Whether a path id can name a row (anything else is simply not found)."""
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return len(value) == 36


def iso(value: datetime) -> str:
    """A timestamp as ISO 8601 UTC."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
