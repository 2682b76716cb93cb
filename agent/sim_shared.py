"""What the fleet simulator's agents share: the HTTP client (one pool) and the counting command registry."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from agent.commands import CommandContext, CommandOutcome, CommandRegistry
from agent.runner import AUTH_PATH

# httpcore's pool scans its whole request queue and every connection for each request it assigns:
# thousands of agents authenticating at once over 100 connections made that quadratic (60 % of a core
# for 40 auths/s). So at most POOL_SIZE requests are in flight, over as many connections; the others
# wait on a semaphore, which costs nothing per waiter.
POOL_SIZE = 10


class CountingRegistry(CommandRegistry):
    """Another registry's commands, counting each one run (shared by the agents: no device state)."""

    def __init__(self, base: CommandRegistry) -> None:
        super().__init__()
        self._base = base
        self.handled = 0

    def names(self) -> list[str]:
        """The command types the wrapped registry handles."""
        return self._base.names()

    async def run(self, command_type: str, parameters: dict[str, Any], ctx: CommandContext) -> CommandOutcome:
        """Run one command and count it."""
        try:
            return await self._base.run(command_type, parameters, ctx)
        finally:
            self.handled += 1


class SimTransport(httpx.AsyncBaseTransport):
    """The shared pool's transport: counts refused auth calls, and sends gateway-bound HTTP to the API."""

    def __init__(self, inner: httpx.AsyncBaseTransport, *, gateway: str | None, api: str) -> None:
        self._inner = inner
        self._gate = asyncio.Semaphore(POOL_SIZE)
        self._from = gateway.rstrip("/") if gateway else None
        self._to = api.rstrip("/")
        self.auth_failures = 0
        self.auth_rate_limited = 0  # device auth is limited per client address (one, here)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Forward the request (rewritten when it was aimed at the gateway)."""
        url = str(request.url)
        if self._from and url.startswith(self._from):
            request.url = httpx.URL(self._to + url[len(self._from) :])
            request.headers["Host"] = request.url.netloc.decode()
        try:
            async with self._gate:
                response = await self._inner.handle_async_request(request)
        except httpx.HTTPError:
            self.auth_failures += request.url.path.endswith(AUTH_PATH)
            raise
        if request.url.path.endswith(AUTH_PATH) and response.status_code != 200:
            self.auth_failures += 1
            self.auth_rate_limited += response.status_code == 429
        return response

    async def aclose(self) -> None:
        """Close the pool."""
        await self._inner.aclose()


def shared_client(
    server: str, gateway: str | None, timeout_s: float
) -> tuple[httpx.AsyncClient, SimTransport]:
    """One client and connection pool for every simulated agent."""
    limits = httpx.Limits(max_connections=POOL_SIZE, max_keepalive_connections=POOL_SIZE)
    inner = httpx.AsyncHTTPTransport(limits=limits)
    transport = SimTransport(inner, gateway=gateway, api=server)
    return httpx.AsyncClient(transport=transport, timeout=timeout_s), transport
