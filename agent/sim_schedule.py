"""The fleet simulator's profiles as pure schedules: which agent slot starts or stops, and when.

No clock and no I/O: times are seconds since the simulation started, randomness comes from the
``random.Random`` passed in, and follow-up operations are timed from the operation that caused
them (never from when the caller polled), so a schedule is the same whatever the polling rate.

- ``steady``: every agent starts once, ``ramp_per_s`` a second, and runs to the end.
- ``flapping``: like steady, but a ``flap_fraction`` of the agents stops (``bye``) after an up time
  drawn from ``flap_up_s`` and starts again (a new boot) after a down time from ``flap_down_s``.
- ``bursty``: agents start in waves at multiples of ``period_s`` (the heartbeat interval), each wave
  spread over the first ``burst_fraction`` of the period at the ramp rate, so every agent's
  heartbeats (sent on connect, then every period) fall in that window: synchronized bursts.
- ``churn``: a pool of ``devices + spare`` slots; each running agent stops after an exponential
  lifetime (``churn_per_min`` of the agents a minute) and the longest-idle slot starts
  ``churn_gap_s`` later in its place, so about ``devices`` run at any time.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from dataclasses import dataclass
from typing import Literal

PROFILES = ("steady", "flapping", "bursty", "churn")
Kind = Literal["start", "stop"]


@dataclass(frozen=True)
class ProfileParams:
    """Knobs of the profiles (defaults suit a run of a few minutes)."""

    ramp_per_s: float = 200.0
    period_s: float = 30.0
    burst_fraction: float = 0.2
    flap_fraction: float = 0.2
    flap_up_s: tuple[float, float] = (10.0, 30.0)
    flap_down_s: tuple[float, float] = (3.0, 10.0)
    churn_per_min: float = 0.1
    churn_spare: float = 0.1
    churn_gap_s: float = 1.0


@dataclass(frozen=True, order=True)
class Op:
    """Start or stop the agent of one slot (an index into the device pool) at ``at`` seconds."""

    at: float
    seq: int
    kind: Kind
    slot: int


def pool_size(profile: str, devices: int, params: ProfileParams) -> int:
    """How many devices a profile needs: churn keeps spare ones to start in place of stopped ones."""
    if profile == "churn":
        return devices + max(1, math.ceil(devices * params.churn_spare))
    return devices


def start_times(profile: str, devices: int, params: ProfileParams) -> list[float]:
    """When each of the first ``devices`` slots starts."""
    ramp = max(params.ramp_per_s, 1e-9)
    if profile != "bursty":
        return [i / ramp for i in range(devices)]
    window = max(params.period_s * params.burst_fraction, 1e-9)
    per_wave = max(1, math.floor(ramp * window))
    return [(i // per_wave) * params.period_s + (i % per_wave) / ramp for i in range(devices)]


class Schedule:
    """The operations of one profile over time: ``due(now)`` hands out those whose time has come."""

    def __init__(self, profile: str, devices: int, params: ProfileParams, rng: random.Random) -> None:
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r} (one of {', '.join(PROFILES)})")
        self.profile = profile
        self.devices = devices
        self.params = params
        self.pool = pool_size(profile, devices, params)
        self._rng = rng
        self._heap: list[Op] = []
        self._seq = 0
        self._flappers: frozenset[int] = frozenset()
        if profile == "flapping":
            count = round(devices * min(max(params.flap_fraction, 0.0), 1.0))
            self._flappers = frozenset(rng.sample(range(devices), count))
        self._idle: deque[int] = deque(range(devices, self.pool))
        for slot, at in enumerate(start_times(profile, devices, params)):
            self._push(at, "start", slot)

    def next_at(self) -> float | None:
        """When the next operation is due (None: nothing more will happen)."""
        return self._heap[0].at if self._heap else None

    def due(self, now: float) -> list[Op]:
        """Every operation due at ``now``, in time order, follow-ups included."""
        out: list[Op] = []
        while self._heap and self._heap[0].at <= now:
            op = heapq.heappop(self._heap)
            out.append(op)
            self._follow(op)
        return out

    def _push(self, at: float, kind: Kind, slot: int) -> None:
        heapq.heappush(self._heap, Op(at, self._seq, kind, slot))
        self._seq += 1

    def _follow(self, op: Op) -> None:
        """What an operation leads to in this profile."""
        p = self.params
        if self.profile == "flapping" and op.slot in self._flappers:
            span = p.flap_up_s if op.kind == "start" else p.flap_down_s
            self._push(op.at + self._rng.uniform(*span), "stop" if op.kind == "start" else "start", op.slot)
        elif self.profile == "churn" and op.kind == "start" and p.churn_per_min > 0:
            self._push(op.at + self._rng.expovariate(p.churn_per_min / 60.0), "stop", op.slot)
        elif self.profile == "churn" and op.kind == "stop":
            self._idle.append(op.slot)
            self._push(op.at + p.churn_gap_s, "start", self._idle.popleft())
