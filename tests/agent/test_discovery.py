"""LAN discovery: the TXT record's encoding, and announce + discover for real over loopback multicast."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid

import pytest
from zeroconf import ServiceInfo

from agent.discovery import (
    SERVICE_TYPE,
    DiscoveredAgent,
    _local_addresses,
    agent_from,
    announce,
    discover,
    discover_lan,
    instance_name,
    parse_txt,
    txt_record,
)

LOOPBACK = ["127.0.0.1"]


def test_txt_record_round_trips_through_the_wire_encoding() -> None:
    txt = txt_record(device_id="dev-1", claimed=True, version="0.3.1", health_port=8765)
    assert txt == {"device_id": "dev-1", "claimed": "true", "version": "0.3.1", "health_port": "8765"}
    info = ServiceInfo(
        SERVICE_TYPE, f"x.{SERVICE_TYPE}", port=8765, properties=txt, parsed_addresses=LOOPBACK
    )
    decoded = ServiceInfo(SERVICE_TYPE, f"x.{SERVICE_TYPE}", port=8765, properties=info.text)
    assert parse_txt(decoded.properties) == txt


def test_an_unclaimed_agent_announces_an_empty_device_id() -> None:
    txt = txt_record(device_id=None, claimed=False, version="1", health_port=0)
    assert txt["device_id"] == "" and txt["claimed"] == "false"


def test_parse_txt_lowercases_keys_and_keeps_the_first_duplicate() -> None:
    assert parse_txt({b"Claimed": b"true", b"claimed": b"false", b"flag": None, b"v": b"\xff"}) == {
        "claimed": "true",
        "flag": "",
        "v": "\ufffd",
    }


def test_agent_from_reads_a_malformed_record_as_absent() -> None:
    agent = agent_from(
        f"fleet-agent-pi.{SERVICE_TYPE}",
        {"claimed": "yes", "health_port": "99999"},
        "pi.local.",
        ["10.0.0.2"],
    )
    assert agent == DiscoveredAgent("fleet-agent-pi", "", False, "", None, "pi.local", ("10.0.0.2",))
    assert agent.as_dict() == {
        "name": "fleet-agent-pi",
        "device_id": "",
        "claimed": "false",
        "version": "",
        "health_port": "",
        "host": "pi.local",
        "addresses": "10.0.0.2",
    }


def test_instance_name_is_one_safe_dns_label() -> None:
    assert instance_name("3f2a-77", "pi") == "fleet-agent-3f2a-77"
    assert instance_name(None, "kitchen.pi.lan") == "fleet-agent-kitchen-pi-lan"
    assert instance_name("", "...") == "fleet-agent-device"
    assert len(instance_name("x" * 200, "pi").encode()) == 63


def multicast_on_loopback() -> bool:
    """Whether a multicast datagram sent on 127.0.0.1 comes back to a member socket (what mDNS needs)."""
    group = "224.0.0.251"
    recv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    send = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        recv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        recv.bind(("", 0))
        port = recv.getsockname()[1]
        mreq = socket.inet_aton(group) + socket.inet_aton("127.0.0.1")
        recv.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        recv.settimeout(1.0)
        send.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        send.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        send.sendto(b"probe", (group, port))
        return recv.recv(16) == b"probe"
    except OSError:
        return False
    finally:
        recv.close()
        send.close()


live = pytest.mark.skipif(not multicast_on_loopback(), reason="no multicast on loopback in this environment")


def ours(agents: list[DiscoveredAgent], device_id: str) -> DiscoveredAgent | None:
    # Other agents (other tests, other workers) may announce on the same host: find ours by id.
    return next((a for a in agents if a.name == instance_name(device_id, "")), None)


@live
@pytest.mark.timeout(60)
async def test_announce_then_discover_on_loopback() -> None:
    device_id = f"test-{uuid.uuid4()}"
    async with announce(
        device_id=device_id, claimed=False, version="9.9", health_port=8765, interfaces=LOOPBACK
    ) as ann:
        assert ann.name == f"{instance_name(device_id, '')}.{SERVICE_TYPE}"
        found = ours(await discover(1.5, interfaces=LOOPBACK), device_id)
        assert found is not None
        assert (found.device_id, found.claimed, found.version, found.health_port) == (
            device_id,
            False,
            "9.9",
            8765,
        )
        assert found.addresses == ("127.0.0.1",)

        await ann.update(device_id=device_id, claimed=True)
        found = ours(await discover(1.5, interfaces=LOOPBACK), device_id)
        assert found is not None and found.claimed is True

    assert ours(await discover(1.5, interfaces=LOOPBACK), device_id) is None  # the goodbye was heard


@live
@pytest.mark.timeout(60)
async def test_awaited_announcement_and_the_cli_entry_point() -> None:
    device_id = f"test-{uuid.uuid4()}"
    ann = await announce(device_id=device_id, claimed=True, version="1.0", interfaces=LOOPBACK)
    try:
        rows = await asyncio.to_thread(discover_lan, 1.5)  # synchronous: its own event loop
    finally:
        await ann.close()
        await ann.close()  # twice is harmless
    row = next((r for r in rows if r["device_id"] == device_id), None)
    assert row is not None
    assert row["claimed"] == "true" and row["version"] == "1.0" and row["health_port"] == "0"


async def test_a_failed_start_releases_its_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    ann = announce(device_id="x", claimed=False, version="1", interfaces=LOOPBACK)

    async def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("name taken")

    monkeypatch.setattr("zeroconf.asyncio.AsyncZeroconf.async_register_service", refuse)
    with pytest.raises(RuntimeError):
        await ann
    with contextlib.suppress(Exception):
        await ann.close()
    assert ann._zc is None


def test_local_addresses_are_ipv4_and_never_empty() -> None:
    addresses = _local_addresses()
    assert addresses and all(socket.inet_aton(a) for a in addresses)
    assert all(not a.startswith("169.254.") for a in addresses)


@live
async def test_fleet_discover_lists_an_announcing_agent() -> None:
    """``fleet discover --json`` (a real process) finds an agent announcing itself."""
    import json
    import subprocess
    import sys

    device_id = f"test-{uuid.uuid4()}"
    ann = await announce(device_id=device_id, claimed=True, version="2.0", health_port=8123)
    try:
        argv = [sys.executable, "-m", "fleet", "discover", "--timeout", "1.5", "--json"]
        done = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=30)
    finally:
        await ann.close()
    assert done.returncode == 0, done.stderr
    row = next((r for r in json.loads(done.stdout) if r["device_id"] == device_id), None)
    assert row is not None and row["claimed"] == "true" and row["health_port"] == "8123"
