"""The fleet simulator's engine: many ``AgentRunner``s in one event loop (no CLI here: ``fleet simulate``).

Every simulated device is a real ``AgentRunner`` (the same protocol code as ``python -m agent``) with
a mock sampler, a ``MemorySpool`` and its own WebSocket. They share what holds no per-device state:
one ``AgentConfig``, one ``httpx.AsyncClient`` (one connection pool), one command registry (which
counts the commands run), one ``random.Random`` for backoff jitter. A profile's ``Schedule`` says
when each agent starts and stops; progress is sampled once a second from the runners' public state
(``protocol.socket``, ``heartbeat_count``, ``heartbeat_errors``, ``stopping``).

``gateway_url`` sends the agents' sockets to a gateway running as its own process while their HTTP
calls (auth, heartbeats while the socket is down) still go to ``server_url``: the agents are
configured with the gateway's URL, and the shared client's transport rewrites their HTTP requests
to ``server_url``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from agent.commands import default_registry
from agent.config import AgentConfig, Credentials
from agent.metrics import make_sampler
from agent.protocol import SocketState
from agent.runner import FINAL_WAIT_S, RESTART, AgentRunner
from agent.sim_schedule import Op, ProfileParams, Schedule, pool_size
from agent.sim_shared import CountingRegistry, SimTransport, shared_client
from agent.sim_spool import MemorySpool

TICK_S = 0.05  # how often due starts/stops are applied (ramp granularity)


@dataclass(frozen=True)
class SimConfig:
    """One simulation: where, how many, which profile, for how long."""

    server_url: str
    devices: int
    profile: str = "steady"
    duration_s: float = 60.0
    interval_s: float = 30.0
    params: ProfileParams = field(default_factory=ProfileParams)
    gateway_url: str | None = None
    seed: int | None = None
    http_timeout_s: float = 10.0


@dataclass
class Progress:
    """What the simulation looks like now (counts since it started)."""

    elapsed_s: float = 0.0
    running: int = 0
    connected: int = 0
    heartbeats: int = 0
    heartbeats_per_s: float = 0.0
    commands: int = 0
    errors: int = 0
    auth_failures: int = 0
    auth_rate_limited: int = 0
    heartbeat_errors: int = 0
    disconnects: int = 0
    failed_exits: int = 0
    starts: int = 0
    stops: int = 0
    clean_exits: int = 0
    connected_peak: int = 0
    all_connected_at: float | None = None
    heartbeats_at_all_connected: int = 0


class Simulator:
    """Runs one simulation: ``await run()`` until ``duration_s`` or ``request_stop()``."""

    def __init__(
        self,
        cfg: SimConfig,
        credentials: Sequence[Credentials],
        *,
        on_progress: Callable[[Progress], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        need = pool_size(cfg.profile, cfg.devices, cfg.params)
        if len(credentials) < need:
            raise ValueError(f"profile {cfg.profile} needs {need} devices, got {len(credentials)}")
        self.cfg = cfg
        self.credentials = list(credentials[:need])
        self.progress = Progress()
        self._on_progress = on_progress
        self._clock = clock
        self._rng = random.Random(cfg.seed)
        self._schedule = Schedule(cfg.profile, cfg.devices, cfg.params, random.Random(cfg.seed))
        self._registry = CountingRegistry(default_registry())
        self._live: dict[int, tuple[AgentRunner, asyncio.Task[int]]] = {}
        self._deferred: set[int] = set()
        self._was_ready: set[int] = set()
        self._done_heartbeats = 0
        self._done_errors = 0
        self._t0 = clock()
        self._last = (0.0, 0)  # (elapsed, heartbeats) at the previous sample
        self._stop = asyncio.Event()
        self._agent_cfg: AgentConfig | None = None
        self._http: httpx.AsyncClient | None = None
        self._transport: SimTransport | None = None

    def request_stop(self) -> None:
        """End the run early (every agent still says ``bye``)."""
        self._stop.set()

    async def run(self) -> Progress:
        """Run the schedule for ``duration_s``, then stop every agent cleanly; the final progress."""
        with tempfile.TemporaryDirectory(prefix="fleet-sim-") as state:
            self._agent_cfg = self._agent_config(Path(state))
            cfg = self.cfg
            self._http, self._transport = shared_client(cfg.server_url, cfg.gateway_url, cfg.http_timeout_s)
            try:
                await self._loop()
            finally:
                await self._stop_all()
                await self._http.aclose()
        self._sample(self._clock() - self._t0)
        return self.progress

    def _agent_config(self, state_dir: Path) -> AgentConfig:
        # The server's interval wins in the protocol unless a maximum caps it: both say --interval.
        interval = self.cfg.interval_s
        return AgentConfig(
            server_url=self.cfg.gateway_url or self.cfg.server_url,
            name="simulated",
            state_dir=state_dir,
            heartbeat_interval_s=interval,
            max_interval_s=interval,
            mock=True,
            http_timeout_s=self.cfg.http_timeout_s,
            log_level="WARNING",
        )

    async def _loop(self) -> None:
        self._t0 = self._clock()
        next_report = 1.0
        while not self._stop.is_set():
            now = self._clock() - self._t0
            if now >= self.cfg.duration_s:
                break
            for op in self._schedule.due(now):
                self._apply(op)
            for slot in [s for s in self._deferred if s not in self._live]:
                self._deferred.discard(slot)
                self._start(slot)
            if now >= next_report:
                self._sample(now)
                next_report = int(now) + 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), TICK_S)

    def _apply(self, op: Op) -> None:
        if op.kind == "stop":
            live = self._live.get(op.slot)
            if live is not None:
                live[0].request_shutdown()
                self.progress.stops += 1
        elif op.slot in self._live:
            self._deferred.add(op.slot)  # its previous run is still saying goodbye
        else:
            self._start(op.slot)

    def _start(self, slot: int) -> None:
        assert self._agent_cfg is not None
        seed = None if self.cfg.seed is None else self.cfg.seed * 1_000_003 + slot
        runner = AgentRunner(
            self._agent_cfg,
            self.credentials[slot],
            sampler=make_sampler(True, seed=seed),
            registry=self._registry,
            spool=MemorySpool(max_heartbeats=1000),
            http=self._http,
            rng=self._rng,
        )
        task = asyncio.create_task(runner.run())
        task.add_done_callback(functools.partial(self._finished, slot))
        self._live[slot] = (runner, task)
        self.progress.starts += 1

    def _finished(self, slot: int, task: asyncio.Task[int]) -> None:
        runner, _ = self._live.pop(slot)
        self._was_ready.discard(slot)
        self._done_heartbeats += runner.protocol.heartbeat_count
        self._done_errors += runner.protocol.heartbeat_errors
        code = None if task.cancelled() or task.exception() is not None else task.result()
        if code == 0:
            self.progress.clean_exits += 1
        elif code == RESTART and not self._stop.is_set():
            self._deferred.add(slot)  # a `restart` command: the agent comes back, as a process would
        else:
            self.progress.failed_exits += 1

    def _sample(self, now: float) -> None:
        """Progress from the runners' public state (once a second: 10,000 runners take ~5 ms)."""
        p = self.progress
        heartbeats, errors, connected = self._done_heartbeats, self._done_errors, 0
        for slot, (runner, _) in self._live.items():
            proto = runner.protocol
            heartbeats += proto.heartbeat_count
            errors += proto.heartbeat_errors
            if proto.socket is SocketState.READY:
                connected += 1
                self._was_ready.add(slot)
            elif slot in self._was_ready:
                self._was_ready.discard(slot)
                p.disconnects += not proto.stopping
        then, before = self._last
        p.heartbeats_per_s = (heartbeats - before) / (now - then) if now > then else 0.0
        self._last = (now, heartbeats)
        p.elapsed_s, p.heartbeats, p.connected, p.running = now, heartbeats, connected, len(self._live)
        p.heartbeat_errors, p.commands = errors, self._registry.handled
        if self._transport is not None:
            p.auth_failures, p.auth_rate_limited = (
                self._transport.auth_failures,
                self._transport.auth_rate_limited,
            )
        p.errors = p.auth_failures + p.heartbeat_errors + p.disconnects + p.failed_exits
        p.connected_peak = max(p.connected_peak, connected)
        if p.all_connected_at is None and connected >= self.cfg.devices:
            p.all_connected_at, p.heartbeats_at_all_connected = now, heartbeats
        if self._on_progress is not None:
            self._on_progress(p)

    async def _stop_all(self) -> None:
        """Every agent says ``bye``; waits for them (a little longer than one agent's own bound)."""
        for runner, _ in self._live.values():
            runner.request_shutdown()
        tasks = [task for _, task in self._live.values()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=FINAL_WAIT_S * 2 + 5)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
