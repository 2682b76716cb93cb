"""The agent's I/O shell: performs what ``agent.protocol`` decides, feeds the outcomes back.

One ``AgentRunner`` is one device: its own protocol, spool, token and socket; nothing global, and no
signal handlers (``agent.__main__`` installs those), so the fleet simulator can run many runners in
one event loop and share one ``httpx.AsyncClient`` between them (``http=``); each needs a spool of
its own (``spool=Spool(Path(":memory:"))`` keeps none on disk). Per-heartbeat lines are logged at
INFO on ``agent.runner``: raise that logger's level for many agents.

The wire (routes, the socket, what each answer means) is ``agent.wire``.

Commands run as tasks through the registry: ``ack`` on arrival (by the protocol), ``result`` after.
A ``restart`` command makes ``run()`` return ``RESTART`` once its result is recorded.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

import httpx

from agent import protocol as p
from agent import wire
from agent.commands import CommandContext, CommandOutcome, CommandRegistry
from agent.config import AgentConfig, Credentials, apply_runtime_config
from agent.metrics import Sampler
from agent.spool import Spool
from agent.wire import AUTH_PATH, BATCH_PATH, HEARTBEAT_PATH, WS_PATH, heartbeat_body, ws_url
from libs.events.schemas.agent import AgentFrame, Command, Heartbeat, HeartbeatAck, Result, Welcome

# The wire's names stay importable from here (the simulator and the CLI import them).
__all__ = [
    "AGENT_VERSION",
    "AUTH_PATH",
    "BATCH_PATH",
    "FINAL_WAIT_S",
    "HEARTBEAT_PATH",
    "RESTART",
    "WS_PATH",
    "AgentRunner",
    "heartbeat_body",
    "settings_for",
    "ws_url",
]

AGENT_VERSION = "0.1.0"
RESTART = 3  # exit code: a restart was requested (``python -m agent`` re-executes itself)
FINAL_WAIT_S = 5.0  # how long a shutdown waits for bye / the offline heartbeat

log = logging.getLogger("agent.runner")


def settings_for(cfg: AgentConfig, capabilities: list[str]) -> p.Settings:
    """Protocol settings from the agent config."""
    return p.Settings(
        heartbeat_interval_s=cfg.heartbeat_interval_s,
        max_interval_s=cfg.max_interval_s,
        backoff_base_s=cfg.backoff_base_s,
        backoff_cap_s=cfg.backoff_cap_s,
        stable_after_s=cfg.stable_after_s,
        offline_sample_every=cfg.offline_sample_every,
        http_only=cfg.http_only,
        agent_version=AGENT_VERSION,
        capabilities=tuple(capabilities),
    )


class AgentRunner:
    """One device's agent: drives an ``AgentProtocol`` with websockets and httpx."""

    def __init__(
        self,
        cfg: AgentConfig,
        credentials: Credentials,
        *,
        sampler: Sampler,
        registry: CommandRegistry,
        spool: Spool | None = None,
        http: httpx.AsyncClient | None = None,
        rng: random.Random | None = None,
        boot: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.credentials = credentials
        self.sampler = sampler
        self.registry = registry
        self.spool = spool or Spool.in_dir(cfg.state_dir, max_heartbeats=cfg.spool_max_heartbeats)
        self.boot = boot or secrets.token_hex(8)
        settings = settings_for(cfg, registry.names())
        self.protocol = p.AgentProtocol(settings, boot=self.boot, rng=rng or random.Random())
        self.exit_message = ""
        self._http = http
        self._own_http = http is None
        self._token: str | None = None
        self._events: asyncio.Queue[p.Event] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._final: list[asyncio.Task[None]] = []
        self._socket_task: asyncio.Task[None] | None = None
        self._outbox: asyncio.Queue[AgentFrame | None] | None = None
        self._batch_ids: list[int] = []
        self._exit: int | None = None
        self._restart = False
        self._started_at = time.monotonic()

    @property
    def _who(self) -> str:
        return self.credentials.device_id

    # --- control ------------------------------------------------------------------------------

    def request_shutdown(self) -> None:
        """Leave cleanly (bye, or an offline heartbeat over HTTP); ``run()`` then returns 0."""
        self._events.put_nowait(p.ShutdownRequested(now=time.monotonic(), wall=datetime.now(UTC)))

    def request_restart(self) -> None:
        """Stop after the running command's result is recorded; ``run()`` returns ``RESTART``."""
        self._restart = True

    def apply_config(self, changes: dict[str, Any]) -> dict[str, Any]:
        """``update_config``: validate, persist, and adopt the settings; returns what was applied."""
        self.cfg = apply_runtime_config(self.cfg, changes)
        self.protocol.reconfigure(settings_for(self.cfg, self.registry.names()))
        if "log_level" in changes:
            logging.getLogger("agent").setLevel(self.cfg.log_level)
        return {key: getattr(self.cfg, key) for key in changes}

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Whether the agent is healthy, and the health document of ``agent.health``."""
        now, proto = time.monotonic(), self.protocol
        last = proto.last_heartbeat_at
        last_wall = None if last is None else datetime.fromtimestamp(time.time() - (now - last), UTC)
        healthy = proto.is_healthy(now)
        return healthy, {
            "status": "healthy" if healthy else "unhealthy",
            "uptime": round(now - self._started_at, 3),
            "heartbeatCount": proto.heartbeat_count,
            "heartbeatErrors": proto.heartbeat_errors,
            "websocket": proto.socket.value,
            "lastHeartbeat": None if last_wall is None else last_wall.isoformat().replace("+00:00", "Z"),
            "spooled": proto.spooled,
        }

    # --- the loop -----------------------------------------------------------------------------

    async def run(self) -> int:
        """Run until shutdown or a fatal error; returns the process exit code."""
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.cfg.http_timeout_s)
        try:
            self.spool.prune(now=time.time())
            self._feed(
                p.Started(
                    now=time.monotonic(),
                    executed=self.spool.executed(),
                    pending_results=self.spool.pending_results(),
                    spooled=self.spool.heartbeat_count(),
                )
            )
            while self._exit is None:
                await self._next()
            await self._finish()
        finally:
            await self._cleanup()
        if self._exit == 0 and self._restart:
            return RESTART
        return self._exit

    async def _next(self) -> None:
        wake = self.protocol.next_wakeup()
        timeout = None if wake is None else wake - time.monotonic()
        if timeout is not None and timeout <= 0:
            self._tick()  # due timers first, so a stream of events cannot starve them
            return
        try:
            event = await asyncio.wait_for(self._events.get(), timeout)
        except TimeoutError:
            self._tick()
            return
        self._feed(event)
        if isinstance(event, p.CommandFinished) and self._restart:
            self.request_shutdown()

    def _tick(self) -> None:
        now = time.monotonic()
        metrics = self._sample() if self.protocol.heartbeat_due(now) else {}
        self._feed(p.Tick(now=now, wall=datetime.now(UTC), metrics=metrics))

    def _feed(self, event: p.Event) -> None:
        self._narrate(event)
        for action in self.protocol.receive(event):
            self._do(action)

    def _narrate(self, event: p.Event) -> None:
        """The few lines an operator looks for in the log (never a secret or token)."""
        match event:
            case p.AuthSucceeded():
                log.info("[%s] authenticated (session for %.0f s)", self._who, event.expires_in_s)
            case p.FrameReceived(frame=Welcome() as w):
                interval = w.heartbeat_interval_ms / 1000
                log.info("[%s] agent socket connected (heartbeat every %g s)", self._who, interval)
            case p.FrameReceived(frame=HeartbeatAck() as ack):
                log.info("[%s] heartbeat %d stored (socket)", self._who, ack.seq)
            case p.HeartbeatAnswered():
                log.info("[%s] heartbeat %d stored (http)", self._who, event.seq)
            case p.BatchAnswered(sent=sent) if sent:
                log.info("[%s] backfilled %d spooled heartbeats (%d left)", self._who, sent, event.remaining)
            case p.ShutdownRequested():
                log.info("[%s] shutting down", self._who)

    def _do(self, action: p.Action) -> None:
        match action:
            case p.Authenticate():
                self._spawn(self._authenticate())
            case p.OpenSocket():
                self._socket_task = self._spawn(self._socket())
            case p.SendFrame():
                if self._outbox is not None:
                    self._outbox.put_nowait(action.frame)
            case p.CloseSocket():
                if self._outbox is not None:
                    self._outbox.put_nowait(None)  # after the frames queued before it (bye)
                elif self._socket_task is not None:
                    self._socket_task.cancel()  # still in its handshake: nothing to say goodbye on
            case p.PostHeartbeat():
                task = self._spawn(self._post_heartbeat(action.heartbeat, action.boot))
                if action.final:
                    self._final.append(task)
            case p.PostBatch():
                self._spawn(self._post_batch(action.limit))
            case p.DropBatch():
                self.spool.delete_heartbeats(self._batch_ids, dropped=True)
            case p.SpoolHeartbeat():
                if self.spool.add_heartbeat(heartbeat_body(action.heartbeat, action.boot)):
                    log.warning("[%s] spool full: dropped the oldest heartbeat", self._who)
            case p.RecordResult():
                self.spool.record_result(action.result, finished_at=time.time())
                self.spool.prune(now=time.time())  # the executed-id memory stays bounded while running
            case p.ResultDelivered():
                self.spool.mark_delivered(action.command_id)
            case p.RunCommand():
                self._spawn(self._run_command(action.command))
            case p.Log():
                log.log(logging.getLevelName(action.level.upper()), "[%s] %s", self._who, action.message)
            case p.Exit():
                self._exit, self.exit_message = action.code, action.message

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _put(self, event: p.Event) -> None:
        self._events.put_nowait(event)

    def _sample(self) -> dict[str, float]:
        try:
            readings = self.sampler.sample()
        except Exception:  # a broken sensor must not stop the heartbeat
            log.exception("[%s] metrics sampling failed", self._who)
            return {}
        wanted = self.cfg.metrics
        return readings if wanted is None else {k: v for k, v in readings.items() if k in wanted}

    async def _finish(self) -> None:
        pending = [*self._final, *([self._socket_task] if self._socket_task else [])]
        if pending:
            await asyncio.wait(pending, timeout=FINAL_WAIT_S)

    async def _cleanup(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=FINAL_WAIT_S)
        if self._own_http and self._http is not None:
            await self._http.aclose()

    # --- I/O (the wire decides what each answer means) -----------------------------------------

    async def _authenticate(self) -> None:
        assert self._http is not None
        event, token = await wire.authenticate(self._http, self.cfg.server_url, self.credentials)
        if token is not None:
            self._token = token
        self._put(event)

    async def _socket(self) -> None:
        outbox: asyncio.Queue[AgentFrame | None] = asyncio.Queue()

        def attach(live: bool) -> None:
            if live:
                self._outbox = outbox
            elif self._outbox is outbox:
                self._outbox = None

        await wire.socket_session(
            self.cfg.server_url,
            self._token,
            outbox=outbox,
            attach=attach,
            put=self._put,
            open_timeout=self.cfg.http_timeout_s,
            who=self._who,
        )

    async def _post_heartbeat(self, hb: Heartbeat, boot: str) -> None:
        assert self._http is not None
        self._put(await wire.post_heartbeat(self._http, self.cfg.server_url, hb, boot, self._token))

    async def _post_batch(self, limit: int) -> None:
        assert self._http is not None
        rows = self.spool.oldest_heartbeats(limit)
        self._batch_ids = [row_id for row_id, _ in rows]
        if not rows:
            self._put(p.BatchAnswered(now=time.monotonic(), sent=0, remaining=self.spool.heartbeat_count()))
            return
        items = [item for _, item in rows]
        status = await wire.post_batch(self._http, self.cfg.server_url, items, self._token)
        if status != 200:
            self._put(p.BatchFailed(now=time.monotonic(), status=status))
            return
        self.spool.delete_heartbeats(self._batch_ids)
        remaining = self.spool.heartbeat_count()
        self._put(p.BatchAnswered(now=time.monotonic(), sent=len(rows), remaining=remaining))

    async def _run_command(self, command: Command) -> None:
        ctx = CommandContext(
            mock=self.cfg.mock,
            state_dir=self.cfg.state_dir,
            scripts_dir=self.cfg.scripts,
            request_restart=self.request_restart,
            apply_config=self.apply_config,
        )
        started = time.monotonic()
        try:
            outcome = await self.registry.run(command.command_type, dict(command.parameters), ctx)
        except Exception as exc:  # the registry reports failures itself; this is a last resort
            log.exception("[%s] command %s crashed", self._who, command.command_id)
            error = f"{type(exc).__name__}: {exc}"[:5000]
            outcome = CommandOutcome("failed", error=error, duration_ms=(time.monotonic() - started) * 1e3)
        result = Result(
            command_id=command.command_id,
            status=outcome.status,
            result=outcome.result,
            error=outcome.error,
            output=outcome.output,
            executed_at=datetime.now(UTC),
            duration_ms=outcome.duration_ms,
        )
        self._put(p.CommandFinished(now=time.monotonic(), result=result))
