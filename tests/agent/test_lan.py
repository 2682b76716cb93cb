"""The agent process's LAN announcement: unclaimed then claimed, in the background, one warning when
the network refuses, and ``python -m agent`` announcing (and saying goodbye) for real."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.discovery import discover
from agent.lan import LanAnnouncer

from .test_discovery import multicast_on_loopback


@dataclass
class FakeAnnouncement:
    calls: list[tuple[Any, ...]]
    fail: BaseException | None = None
    hang: bool = False
    name: str = "fleet-agent-x._fleet-agent._tcp.local."

    async def start(self) -> FakeAnnouncement:
        self.calls.append(("start",))
        if self.hang:
            await asyncio.Event().wait()
        if self.fail is not None:
            raise self.fail
        return self

    async def update(self, *, device_id: str | None, claimed: bool) -> None:
        self.calls.append(("update", device_id, claimed))

    async def close(self) -> None:
        self.calls.append(("close",))


@dataclass
class Factory:
    fail: BaseException | None = None
    hang: bool = False
    calls: list[tuple[Any, ...]] = field(default_factory=list)

    def __call__(self, *, device_id: str | None, claimed: bool, version: str, health_port: int) -> Any:
        self.calls.append(("announce", device_id, claimed, version, health_port))
        return FakeAnnouncement(self.calls, self.fail, self.hang)


def announcer(factory: Factory, enabled: bool = True) -> LanAnnouncer:
    return LanAnnouncer(enabled=enabled, version="0.1.0", health_port=8765, announce_with=factory)


async def settle(lan: LanAnnouncer) -> None:
    await asyncio.wait_for(asyncio.gather(lan._task or asyncio.sleep(0)), 5)


async def test_unclaimed_before_enrolment_then_claimed_then_goodbye() -> None:
    factory = Factory()
    lan = announcer(factory)
    lan.start(None)
    lan.claimed("dev-1")
    await settle(lan)
    await lan.close()
    assert factory.calls == [
        ("announce", None, False, "0.1.0", 8765),
        ("start",),
        ("update", "dev-1", True),
        ("close",),
    ]


async def test_an_agent_with_credentials_is_announced_claimed_from_the_start() -> None:
    factory = Factory()
    lan = announcer(factory)
    lan.start("dev-2")
    await settle(lan)
    await lan.close()
    assert factory.calls[0] == ("announce", "dev-2", True, "0.1.0", 8765)


async def test_no_multicast_is_one_warning_and_nothing_else(caplog: pytest.LogCaptureFixture) -> None:
    factory = Factory(fail=OSError(19, "No such device"))
    lan = announcer(factory)
    with caplog.at_level(logging.WARNING, logger="agent.lan"):
        lan.start(None)
        lan.claimed("dev-3")
        await settle(lan)
        await lan.close()
    assert [r.getMessage() for r in caplog.records] == [
        "not announced on the LAN (mDNS): OSError: [Errno 19] No such device"
    ]
    assert ("update", "dev-3", True) not in factory.calls


async def test_disabled_announces_nothing() -> None:
    factory = Factory()
    lan = announcer(factory, enabled=False)
    lan.start(None)
    lan.claimed("dev-4")
    await lan.close()
    assert factory.calls == []


async def test_closing_while_the_registration_hangs_does_not_wait_for_it() -> None:
    factory = Factory(hang=True)
    lan = announcer(factory)
    lan.start(None)
    await asyncio.sleep(0.05)
    await asyncio.wait_for(lan.close(), 1)
    assert factory.calls[-1] == ("close",)


def test_discovery_is_on_by_default_and_can_be_turned_off(tmp_path: Path) -> None:
    env = {"FLEET_AGENT_STATE_DIR": str(tmp_path)}
    assert load_config(env).discovery is True
    assert load_config({**env, "FLEET_AGENT_DISCOVERY": "false"}).discovery is False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(not multicast_on_loopback(), reason="no multicast in this environment")
@pytest.mark.timeout(60)
async def test_the_agent_process_announces_itself_unclaimed_while_it_waits_to_enrol(tmp_path: Path) -> None:
    health = _free_port()
    env = {
        **os.environ,
        "FLEET_AGENT_SERVER_URL": f"http://127.0.0.1:{_free_port()}",  # nobody answers the enrolment
        "FLEET_AGENT_ENROLMENT_TOKEN": "t" * 64,
        "FLEET_AGENT_STATE_DIR": str(tmp_path / "state"),
        "FLEET_AGENT_HEALTH_PORT": str(health),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        ours = None
        for _ in range(10):  # registering takes a moment of probing
            ours = next((a for a in await discover(1.5) if a.health_port == health), None)
            if ours is not None:
                break
        assert ours is not None and (ours.device_id, ours.claimed) == ("", False)
        proc.send_signal(signal.SIGTERM)
        _out, err = await asyncio.to_thread(proc.communicate, timeout=20)
        assert proc.returncode == 0, err.decode()
        assert b"Traceback" not in err
        assert not [a for a in await discover(1.5) if a.health_port == health]  # the goodbye was heard
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
