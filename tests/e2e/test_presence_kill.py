"""A killed and restarted device worker reports the same presence transitions as one that ran throughout.

Real processes (device API, device worker, telemetry API), short timings (interval 1 s, timeout 3 s).
One deterministic heartbeat script runs twice, each time on fresh devices of a workspace of its own:

- run A: the device worker runs throughout;
- run B: the worker is SIGKILLed twice mid-script (while deadlines are pending and heartbeats keep
  arriving), stays down for a second or two and is restarted under the same consumer name (as
  docs/architecture.md asks of replicas).

Per device, the ``device.status_changed`` events on ``events:device`` (status, previous, reason, and
``at`` relative to the script's start) and the status read back at the end of the script must be the
same in both runs; run A must also match what the script implies.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis

from libs.events.envelope import decode_entry, decode_event
from libs.events.identity import Claims, Signer
from libs.events.schemas import REGISTRY
from libs.events.schemas.device import DeviceStatusChanged

from ..conftest import REDIS_URL, free_port
from .test_presence_processes import wait_ready

ROOT = Path(__file__).resolve().parents[2]
KEY = "e2e-signing-key-" + "k" * 32
CONSUMER = "device-kill-test"  # stable across restarts: a restarted worker re-reads its own pending entries
STEP = 0.5  # seconds between two heartbeats of a beating device (the interval is 1 s)
END = 12.0  # the script's last heartbeat; steady devices would be late at END + 1.5
WINDOW = END + 0.5  # transitions dated up to here (seconds into the script) are compared
KILLS = ((3.2, 4.0), (7.8, 8.6))  # run B: SIGKILL at, restart at (seconds into the script)
TOLERANCE_S = 0.25  # on `at`: heartbeats are sent within a few ms of their planned time
MAX_LAG_S = 0.2  # the script's margins around deadlines are >= 0.4 s


@dataclasses.dataclass(frozen=True)
class Beat:
    """A heartbeat sent ``at`` seconds into the script: dialect S, or the agent protocol with a seq."""

    at: float
    seq: int | None = None
    sent: float = 0.0  # the agent's sent_at, in seconds into the script


def every(start: float, stop: float) -> list[float]:
    """``start``, ``start + STEP``, ... up to ``stop`` included."""
    return [start + i * STEP for i in range(round((stop - start) / STEP) + 1)]


def s_beats(start: float, stop: float) -> list[Beat]:
    """Dialect S heartbeats every STEP from ``start`` to ``stop``."""
    return [Beat(t) for t in every(start, stop)]


def agent_beats(start: float, stop: float, first_seq: int = 1) -> list[Beat]:
    """Agent heartbeats every STEP with consecutive sequence numbers and ``sent_at`` = send time."""
    return [Beat(t, seq, t) for seq, t in enumerate(every(start, stop), first_seq)]


def again(at: float, beat: Beat) -> Beat:
    """The same agent heartbeat sent again later (a duplicate, or a straggler when a newer one went first)."""
    return dataclasses.replace(beat, at=at)


_dups = agent_beats(0, 1)  # seq 1..3
_dups_back = agent_beats(6, END, first_seq=4)  # seq 4..16; [4] is sent at 8.0, [3] at 7.5
_stop = agent_beats(0, 8.5)  # seq 1..18; [16] is sent at 8.0, [15] at 7.5

SCRIPT: dict[str, list[Beat]] = {
    # beats throughout, across both kills
    "steady": s_beats(0, END),
    # stops before the first kill; its offline deadline (4.0) passes while the worker is down
    "stops": s_beats(0, 1),
    # offline during the first kill, back at 6.0, stops at 7.5: late (9.0) while the worker is down again
    "resumes": s_beats(0, 1) + s_beats(6, 7.5),
    # late before the first kill, resumes (3.6) while the worker is down, before its offline deadline (4.0)
    "gap": s_beats(0, 1) + s_beats(3.6, END),
    # a duplicate (1.8) and a straggler (2.1) must not postpone late/offline, nor a straggler
    # (4.6) bring it back while offline; during the second kill another duplicate and straggler
    "agent_dups": [
        *_dups,
        again(1.8, _dups[2]),
        again(2.1, _dups[1]),
        again(4.6, _dups[1]),
        *_dups_back,
        again(8.3, _dups_back[4]),
        again(8.6, _dups_back[3]),
    ],
    # beats on while the worker is down the second time and stops then (8.5): late 10.0, offline 11.5;
    # a straggler while it is still online (9.5) and one while offline (11.8) change nothing
    "agent_stops": [*_stop, again(8.2, _stop[16]), again(9.5, _stop[15]), again(11.8, _stop[15])],
}

ON, LATE, OFF = "online", "late", "offline"
FIRST, RESUMED = "first_heartbeat", "heartbeat_resumed"
MISSED, TIMEOUT = "heartbeat_missed", "heartbeat_timeout"
Transition = tuple[str, str, str, float]  # status, previous, reason, at (seconds into the script)
EXPECTED: dict[str, list[Transition]] = {
    "steady": [(ON, OFF, FIRST, 0.0)],
    "stops": [(ON, OFF, FIRST, 0.0), (LATE, ON, MISSED, 2.5), (OFF, LATE, TIMEOUT, 4.0)],
    "resumes": [
        (ON, OFF, FIRST, 0.0),
        (LATE, ON, MISSED, 2.5),
        (OFF, LATE, TIMEOUT, 4.0),
        (ON, OFF, RESUMED, 6.0),
        (LATE, ON, MISSED, 9.0),
        (OFF, LATE, TIMEOUT, 10.5),
    ],
    "gap": [(ON, OFF, FIRST, 0.0), (LATE, ON, MISSED, 2.5), (ON, LATE, RESUMED, 3.6)],
    "agent_dups": [
        (ON, OFF, FIRST, 0.0),
        (LATE, ON, MISSED, 2.5),
        (OFF, LATE, TIMEOUT, 4.0),
        (ON, OFF, RESUMED, 6.0),
    ],
    "agent_stops": [(ON, OFF, FIRST, 0.0), (LATE, ON, MISSED, 10.0), (OFF, LATE, TIMEOUT, 11.5)],
}
FINAL = {"steady": ON, "stops": OFF, "resumes": OFF, "gap": ON, "agent_dups": ON, "agent_stops": OFF}


@dataclasses.dataclass
class Outcome:
    """What one run produced, per script device name."""

    transitions: dict[str, list[Transition]]
    final: dict[str, str]
    max_lag_s: float


class Platform:
    """The device API, the telemetry API and the device worker as processes of this test."""

    def __init__(self, database_url: str, prefix: str, logs: Path) -> None:
        self.database_url, self.prefix, self.logs = database_url, prefix, logs
        self.ports = {"device": free_port(), "telemetry": free_port()}
        self.env = {
            **os.environ,
            "REDIS_URL": REDIS_URL,
            "DATABASE_URL": database_url,
            "STREAM_PREFIX": prefix,
            "SIGNING_KEY": KEY,
            "PYTHONPATH": str(ROOT),
            "DEVICE_PORT": str(self.ports["device"]),
            "TELEMETRY_PORT": str(self.ports["telemetry"]),
            "DEVICE_PRESENCE_INTERVAL_S": "1",
            "DEVICE_PRESENCE_TIMEOUT_S": "3",
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self.worker: subprocess.Popen[bytes] | None = None
        self.worker_log: Path | None = None
        self.redis = redis.Redis.from_url(REDIS_URL)

    def spawn(self, svc: str, role: str, name: str, **env: str) -> subprocess.Popen[bytes]:
        """Start ``python -m services.<svc> <role>`` with its stderr in ``<logs>/<name>.log``."""
        with (self.logs / f"{name}.log").open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", f"services.{svc}", role],
                env={**self.env, **env},
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        self.procs.append(proc)
        return proc

    def start_worker(self) -> None:
        """Start a device worker (non-blocking)."""
        n = sum(1 for _ in self.logs.glob("worker-*.log")) + 1
        self.worker_log = self.logs / f"worker-{n}.log"
        self.worker = self.spawn("device", "worker", f"worker-{n}", DEVICE_CONSUMER_NAME=CONSUMER)

    def worker_started(self) -> bool:
        """Whether the current worker logged that it runs."""
        assert self.worker_log is not None
        return "worker started" in self.worker_log.read_text(errors="replace")

    def kill_worker(self) -> None:
        """SIGKILL the current worker (nothing gets to finish or clean up)."""
        assert self.worker is not None and self.worker.poll() is None, "the worker died on its own"
        assert self.worker_started(), f"the worker was not up yet when it was to be killed: {self.tails()}"
        self.worker.kill()
        self.worker.wait(10)

    def wait_ready(self, within: float = 60.0) -> None:
        """The APIs answer /readyz and the worker consumes."""
        deadline = time.monotonic() + within
        for port in self.ports.values():
            try:
                wait_ready(port, deadline)
            except AssertionError:
                raise AssertionError(f"port {port} not ready: {self.tails()}") from None
        while not (self.worker_started() and self.group_info() is not None):
            assert time.monotonic() < deadline, f"the worker does not consume: {self.tails()}"
            time.sleep(0.1)

    def group_info(self) -> dict[str, object] | None:
        """The ``device.presence`` group on the heartbeats stream (None before the worker made it)."""
        try:
            groups = self.redis.xinfo_groups(f"{self.prefix}telemetry:heartbeats")
        except redis.ResponseError:  # no stream yet
            return None
        return next((g for g in groups if g["name"] in (b"device.presence", "device.presence")), None)

    def caught_up(self) -> bool:
        """Whether the worker has read and acknowledged every heartbeat in the stream."""
        group = self.group_info()
        last = self.redis.xinfo_stream(f"{self.prefix}telemetry:heartbeats")["last-generated-id"]
        return group is not None and group["pending"] == 0 and group["last-delivered-id"] == last

    def outbox_empty(self) -> bool:
        """Whether the device service's relay has published every committed outbox row."""

        async def count() -> int:
            conn = await asyncpg.connect(self.database_url)
            try:
                return int(await conn.fetchval("SELECT count(*) FROM device.outbox"))
            finally:
                await conn.close()

        return asyncio.run(count()) == 0

    def status_changes(self) -> dict[str, list[DeviceStatusChanged]]:
        """Every ``device.status_changed`` on events:device per device id, once each (by envelope id)."""
        seen: set[str] = set()
        out: dict[str, list[DeviceStatusChanged]] = {}
        for _id, fields in self.redis.xrange(f"{self.prefix}events:device"):
            envelope = decode_entry(fields)
            if envelope.type != "device.status_changed.v1" or envelope.id in seen:
                continue
            seen.add(envelope.id)
            event = decode_event(envelope, REGISTRY)
            assert isinstance(event, DeviceStatusChanged)
            out.setdefault(event.device_id, []).append(event)
        return out

    def tails(self, pattern: str = "*.log") -> str:
        """The end of the processes' stderr, for failure messages."""
        parts = []
        for log in sorted(self.logs.glob(pattern)):
            parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-1500:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Terminate every process still running, then kill what does not exit."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.redis.close()


def run_script(platform: Platform, label: str, kills: tuple[tuple[float, float], ...]) -> Outcome:
    """Register fresh devices in a new workspace, play SCRIPT (killing the worker as told) and collect."""
    device_url = f"http://127.0.0.1:{platform.ports['device']}"
    beat_url = f"http://127.0.0.1:{platform.ports['telemetry']}/api/v1"
    signer, now, ws = Signer(KEY), time.time(), str(uuid.uuid4())
    exp = int(now) + 600
    op = signer.issue(Claims(typ="operator", sub="op", ws=ws, iat=now, exp=exp, jti=ws, roles={ws: "owner"}))
    operator = {"Authorization": f"Bearer {op}"}
    ids: dict[str, str] = {}
    sessions: dict[str, dict[str, str]] = {}
    with httpx.Client(timeout=10) as http:
        for name in SCRIPT:
            r = http.post(
                f"{device_url}/api/v1/devices",
                json={"name": f"{label}-{name}", "device_type": "virtual"},
                headers=operator,
            )
            assert r.status_code == 201, r.text
            ids[name] = device_id = r.json()["device_id"]
            claims = Claims(typ="device", sub=device_id, ws=ws, iat=now, exp=exp, jti=device_id, cid="c")
            sessions[name] = {"X-Device-Session": signer.issue(claims)}

        t0 = time.monotonic()
        t0_wall = time.time() - (time.monotonic() - t0)

        def iso(offset: float) -> str:
            return datetime.fromtimestamp(t0_wall + offset, UTC).isoformat()

        def send(name: str, beat: Beat) -> Callable[[], None]:
            def go() -> None:
                if beat.seq is None:
                    r = http.post(
                        f"{beat_url}/device/heartbeat",
                        json={"status": "healthy", "metrics": {"cpu": 5}},
                        headers=sessions[name],
                    )
                else:
                    body = {"seq": beat.seq, "sent_at": iso(beat.sent), "metrics": {"cpu": 5}}
                    r = http.post(f"{beat_url}/agent/heartbeat", json=body, headers=sessions[name])
                assert r.status_code == 200, f"{name} {beat}: {r.status_code} {r.text}"

            return go

        actions: list[tuple[float, int, Callable[[], None]]] = [
            (beat.at, 1, send(name, beat)) for name, beats in SCRIPT.items() for beat in beats
        ]
        for kill_at, restart_at in kills:
            actions += [(kill_at, 0, platform.kill_worker), (restart_at, 0, platform.start_worker)]
        max_lag = 0.0
        for at, _, action in sorted(actions, key=lambda a: (a[0], a[1])):
            if (wait := t0 + at - time.monotonic()) > 0:
                time.sleep(wait)  # the script's own clock: each step at its planned time
            max_lag = max(max_lag, time.monotonic() - t0 - at)
            action()

        # The status once the worker has read every heartbeat (steady devices are late only at END + 1.5).
        deadline = t0 + END + 1.2
        while not platform.caught_up():
            assert time.monotonic() < deadline, f"{label}: the worker did not catch up: {platform.tails()}"
            time.sleep(0.02)
        final = {}
        for name, device_id in ids.items():
            r = http.get(f"{device_url}/api/v1/devices/{device_id}", headers=operator)
            assert r.status_code == 200, r.text
            final[name] = r.json()["status"]
        assert time.monotonic() < deadline, f"{label}: the final statuses were read too late"

    # Transitions dated in the window are committed within a sweep (0.2 s) after it; then published.
    time.sleep(max(0.0, t0 + WINDOW + 0.4 - time.monotonic()))
    deadline = time.monotonic() + 10
    while not platform.outbox_empty():
        assert time.monotonic() < deadline, f"{label}: the outbox does not drain: {platform.tails()}"
        time.sleep(0.05)
    events = platform.status_changes()
    transitions = {}
    for name, device_id in ids.items():
        dated = [(e, round(e.at.timestamp() - t0_wall, 3)) for e in events.get(device_id, [])]
        transitions[name] = [(e.status, e.previous, e.reason, at) for e, at in dated if at <= WINDOW]
    return Outcome(transitions, final, max_lag)


def same(a: list[Transition], b: list[Transition]) -> bool:
    """Equal (status, previous, reason) sequences, with ``at`` equal within TOLERANCE_S."""
    return len(a) == len(b) and all(
        x[:3] == y[:3] and abs(x[3] - y[3]) <= TOLERANCE_S for x, y in zip(a, b, strict=True)
    )


def diff(a: dict[str, list[Transition]], b: dict[str, list[Transition]], la: str, lb: str) -> str:
    """The devices whose transitions differ, both sequences side by side."""
    lines = []
    for name in SCRIPT:
        if not same(a[name], b[name]):
            lines.append(f"{name}:\n  {la}: {a[name]}\n  {lb}: {b[name]}")
    return "\n".join(lines)


@pytest.mark.slow
def test_worker_kill_and_restart_reports_the_same_transitions(database_url, prefix, tmp_path):
    platform = Platform(database_url, prefix, tmp_path)
    try:
        platform.spawn("device", "api", "device-api")
        platform.spawn("telemetry", "api", "telemetry-api")
        platform.start_worker()
        platform.wait_ready()

        a = run_script(platform, "A", kills=())
        assert a.max_lag_s < MAX_LAG_S, f"run A: the script fell {a.max_lag_s:.3f}s behind its plan"
        d = diff(EXPECTED, a.transitions, "expected", "A")
        assert not d, f"run A (no kill):\n{d}\n{platform.tails('worker-*')}"
        assert a.final == FINAL, "run A: final statuses"

        b = run_script(platform, "B", kills=KILLS)
        assert b.max_lag_s < MAX_LAG_S, f"run B: the script fell {b.max_lag_s:.3f}s behind its plan"
        d = diff(a.transitions, b.transitions, "A", "B")
        assert not d, f"run B (worker killed) differs from run A:\n{d}\n{platform.tails('worker-*')}"
        assert b.final == a.final, "run B: final statuses"
    finally:
        platform.stop()
