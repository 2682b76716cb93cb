"""LAN discovery over mDNS/DNS-SD (zeroconf): the agent announces itself, ``fleet discover`` browses.

An agent announces ``_fleet-agent._tcp.local.`` with TXT records ``device_id`` (empty until it has
credentials), ``claimed`` (``true``/``false``), ``version`` and ``health_port``; the service's port
is the health port too (0 when the agent serves none). The TXT parts are pure functions; the
zeroconf calls are at the edges (``Announcement``, ``discover``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from zeroconf import IPVersion, ServiceInfo, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

SERVICE_TYPE = "_fleet-agent._tcp.local."
_RESOLVE_TIMEOUT_MS = 1000
_LABEL_BYTES = 63  # a DNS label


def txt_record(*, device_id: str | None, claimed: bool, version: str, health_port: int) -> dict[str, str]:
    """The TXT record an agent announces."""
    return {
        "device_id": device_id or "",
        "claimed": "true" if claimed else "false",
        "version": version,
        "health_port": str(health_port),
    }


def parse_txt(properties: Mapping[bytes, bytes | None] | Mapping[str, str | None]) -> dict[str, str]:
    """A TXT record as text: keys lower-cased (DNS-SD keys ignore case), a key without value is ""."""
    out: dict[str, str] = {}
    for key, value in properties.items():
        k = key.decode(errors="replace") if isinstance(key, bytes) else key
        v = value.decode(errors="replace") if isinstance(value, bytes) else value or ""
        out.setdefault(k.lower(), v)  # the first of duplicate keys wins (RFC 6763 §6.4)
    return out


def _host_label(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9-]+", "-", text).strip("-")[:_LABEL_BYTES] or "device"


def instance_name(device_id: str | None, hostname: str) -> str:
    """The service instance label: the device id, or the host name before the device is claimed."""
    return f"fleet-agent-{_host_label(device_id or hostname)}"[:_LABEL_BYTES]


@dataclass(frozen=True)
class DiscoveredAgent:
    """An agent found on the LAN."""

    name: str
    device_id: str
    claimed: bool
    version: str
    health_port: int | None
    host: str
    addresses: tuple[str, ...]

    def as_dict(self) -> dict[str, str]:
        """Text fields for the CLI's table or JSON."""
        return {
            "name": self.name,
            "device_id": self.device_id,
            "claimed": "true" if self.claimed else "false",
            "version": self.version,
            "health_port": "" if self.health_port is None else str(self.health_port),
            "host": self.host,
            "addresses": ",".join(self.addresses),
        }


def agent_from(name: str, txt: Mapping[str, str], host: str, addresses: Sequence[str]) -> DiscoveredAgent:
    """A discovered agent from its resolved records (a malformed TXT value reads as absent)."""
    port = txt.get("health_port", "")
    label = name.removesuffix("." + SERVICE_TYPE)
    return DiscoveredAgent(
        name=label,
        device_id=txt.get("device_id", ""),
        claimed=txt.get("claimed", "").lower() == "true",
        version=txt.get("version", ""),
        health_port=int(port) if port.isdigit() and int(port) < 65536 else None,
        host=host.removesuffix("."),
        addresses=tuple(addresses),
    )


def _local_addresses() -> list[str]:
    """This host's IPv4 addresses other announcements should point at (loopback if it has no other)."""
    import ifaddr  # installed with zeroconf; imported here so only an announcing agent loads it

    found = [
        str(ip.ip)
        for adapter in ifaddr.get_adapters()
        for ip in adapter.ips
        if ip.is_IPv4 and not str(ip.ip).startswith(("127.", "169.254."))
    ]
    return found or ["127.0.0.1"]


class Announcement:
    """The agent's mDNS announcement: ``await`` it or ``async with`` it to start, ``close()`` to stop."""

    def __init__(self, info: ServiceInfo, interfaces: Sequence[str] | None) -> None:
        self._info = info
        self._interfaces = interfaces
        self._zc: AsyncZeroconf | None = None

    @property
    def name(self) -> str:
        """The announced instance name (zeroconf may have renamed it after a conflict)."""
        return self._info.name

    async def start(self) -> Announcement:
        """Register the service on the LAN (once)."""
        if self._zc is None:
            self._zc = _zeroconf(self._interfaces)
            try:
                await self._zc.async_register_service(self._info, allow_name_change=True)
            except BaseException:
                await self.close()
                raise
        return self

    async def update(self, *, device_id: str | None, claimed: bool) -> None:
        """Announce a change of identity (the agent got or lost its credentials)."""
        props = parse_txt(self._info.properties)
        props.update(device_id=device_id or "", claimed="true" if claimed else "false")
        self._info = ServiceInfo(
            SERVICE_TYPE, self._info.name, port=self._info.port, properties=props,
            server=self._info.server, addresses=self._info.addresses,
        )  # fmt: skip
        if self._zc is not None:
            await self._zc.async_update_service(self._info)

    async def close(self) -> None:
        """Say goodbye on the LAN and release the sockets (safe to call twice)."""
        zc, self._zc = self._zc, None
        if zc is not None:
            with contextlib.suppress(Exception):  # goodbye is best effort; the TTL ends it anyway
                await zc.async_unregister_service(self._info)
            await zc.async_close()

    def __await__(self) -> Generator[Any, None, Announcement]:
        return self.start().__await__()

    async def __aenter__(self) -> Announcement:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _zeroconf(interfaces: Sequence[str] | None) -> AsyncZeroconf:
    """A zeroconf instance on ``interfaces`` (addresses), or on every IPv4 interface."""
    if interfaces is None:
        return AsyncZeroconf(ip_version=IPVersion.V4Only)
    return AsyncZeroconf(interfaces=list(interfaces), ip_version=IPVersion.V4Only)


def announce(
    *,
    device_id: str | None,
    claimed: bool,
    version: str,
    health_port: int = 0,
    hostname: str | None = None,
    addresses: Sequence[str] | None = None,
    interfaces: Sequence[str] | None = None,
) -> Announcement:
    """The agent's announcement: ``ann = await announce(...)`` / ``await ann.close()``, or ``async with``."""
    hostname = hostname or socket.gethostname()
    label = instance_name(device_id, hostname)
    addrs = list(addresses) if addresses is not None else list(interfaces or _local_addresses())
    info = ServiceInfo(
        SERVICE_TYPE,
        f"{label}.{SERVICE_TYPE}",
        port=health_port,
        properties=txt_record(device_id=device_id, claimed=claimed, version=version, health_port=health_port),
        server=f"{_host_label(hostname)}.local.",
        parsed_addresses=addrs,
    )
    return Announcement(info, interfaces)


async def _resolve(zc: Zeroconf, name: str) -> DiscoveredAgent | None:
    """One instance's SRV, TXT and addresses (from the cache when its announcement carried them)."""
    info = AsyncServiceInfo(SERVICE_TYPE, name)
    if not await info.async_request(zc, _RESOLVE_TIMEOUT_MS):
        return None
    return agent_from(name, parse_txt(info.properties), info.server or "", info.parsed_addresses())


async def discover(
    timeout_s: float = 3.0, *, interfaces: Sequence[str] | None = None
) -> list[DiscoveredAgent]:
    """The agents that answer on the LAN within ``timeout_s``, sorted by name."""
    azc = _zeroconf(interfaces)
    names: set[str] = set()

    def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Removed:
            names.discard(name)
        else:
            names.add(name)

    try:
        browser = AsyncServiceBrowser(azc.zeroconf, SERVICE_TYPE, handlers=[on_change])
        await asyncio.sleep(timeout_s)
        await browser.async_cancel()
        found = await asyncio.gather(*(_resolve(azc.zeroconf, n) for n in sorted(names)))
    finally:
        await azc.async_close()
    return sorted((a for a in found if a is not None), key=lambda a: a.name)


def discover_lan(timeout_s: float = 3.0) -> list[dict[str, str]]:
    """``fleet discover``: the agents on the LAN as text fields (blocks ``timeout_s`` + up to 1 s)."""
    return [agent.as_dict() for agent in asyncio.run(discover(timeout_s))]
