"""The agent process's mDNS announcement (``agent.discovery``) while it runs: best effort, never in the way.

Registering takes a second or two of probing, so it runs in the background and the agent connects
meanwhile; a host without multicast (a container, a locked-down network) costs one warning, and
the agent runs on without it. Before enrolment the agent is announced unclaimed with an empty device
id; once it has credentials, claimed with its id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("agent.lan")
CLOSE_TIMEOUT_S = 3.0  # the goodbye is a courtesy: an exit never waits longer for it


class LanAnnouncer:
    """Announces the agent on the LAN; every failure is logged once as a warning and otherwise ignored."""

    def __init__(
        self,
        *,
        enabled: bool,
        version: str,
        health_port: int,
        announce_with: Callable[..., Any] | None = None,
    ) -> None:
        self.enabled = enabled
        self._version, self._health_port = version, health_port
        self._announce = announce_with  # None: agent.discovery's, imported on first use
        self._announcement: Any = None
        self._task: asyncio.Task[None] | None = None
        self._failed = False

    def _announcer(self) -> Callable[..., Any]:
        if self._announce is None:
            # imported only when announcing: zeroconf is ~4.5 MB of the agent's memory
            from agent.discovery import announce

            self._announce = announce
        return self._announce

    def start(self, device_id: str | None) -> None:
        """Begin announcing (claimed when ``device_id`` is known) without waiting for it."""
        if self.enabled and self._task is None:
            self._task = asyncio.create_task(self._register(device_id))

    def claimed(self, device_id: str) -> None:
        """The agent has enrolled: announce it claimed, with its device id, once registered."""
        if self._task is not None:
            self._task = asyncio.create_task(self._update(self._task, device_id))

    async def close(self) -> None:
        """Stop announcing (goodbye on the LAN), bounded by ``CLOSE_TIMEOUT_S``."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task], timeout=CLOSE_TIMEOUT_S)
        announcement, self._announcement = self._announcement, None
        if announcement is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(announcement.close(), CLOSE_TIMEOUT_S)

    async def _register(self, device_id: str | None) -> None:
        try:
            announcement = self._announcer()(
                device_id=device_id,
                claimed=device_id is not None,
                version=self._version,
                health_port=self._health_port,
            )
            self._announcement = announcement
            await announcement.start()
            log.info("announced on the LAN as %s", announcement.name)
        except Exception as exc:
            self._announcement = None
            self._warn(exc)

    async def _update(self, previous: asyncio.Task[None], device_id: str) -> None:
        await asyncio.gather(previous, return_exceptions=True)
        if self._announcement is None:
            return
        try:
            await self._announcement.update(device_id=device_id, claimed=True)
        except Exception as exc:
            self._warn(exc)

    def _warn(self, exc: Exception) -> None:
        if not self._failed:  # one line, however often the network refuses
            self._failed = True
            log.warning("not announced on the LAN (mDNS): %s: %s", type(exc).__name__, exc)
