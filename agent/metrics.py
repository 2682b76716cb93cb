"""The agent's metric samplers: psutil on a device, a seeded synthetic walk in MOCK_MODE.

Both return only readings the telemetry service accepts as plausible: finite numbers, ``cpu``,
``memory`` and ``disk`` as percents within 0..100, ``uptime`` >= 0, nothing beyond +-1e15.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import psutil

PERCENTS = frozenset({"cpu", "memory", "disk"})
LIMIT = 1e15
# A sensor outside this range (or at exactly 0, what unpopulated hwmon inputs report) is broken.
_TEMP_RANGE = (-40.0, 150.0)
# hwmon reads touch several sysfs files and temperature moves slowly: refresh it every 10 s only.
_TEMP_REFRESH_S = 10.0
_PREFERRED_SENSORS = ("cpu_thermal", "cpu-thermal", "soc_thermal", "coretemp", "k10temp", "zenpower")


class Sampler(Protocol):
    """Something that reads the device's metrics now."""

    def sample(self) -> dict[str, float]: ...


def make_sampler(mock: bool, *, seed: int | None = None) -> Sampler:
    """A psutil sampler, or the synthetic one in MOCK_MODE (seeded for reproducible runs)."""
    return MockSampler(seed) if mock else PsutilSampler()


def bounded(readings: Mapping[str, Any]) -> dict[str, float]:
    """The readings the server takes as plausible: non-finite dropped, the others clamped to range."""
    out: dict[str, float] = {}
    for name, value in readings.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            continue
        if name in PERCENTS or name.endswith("_percent"):
            value = min(max(value, 0.0), 100.0)
        elif name == "uptime":
            value = max(value, 0.0)
        out[name] = min(max(value, -LIMIT), LIMIT)
    return out


def pick_temperature(sensors: Mapping[str, Iterable[Any]]) -> float | None:
    """The CPU/SoC temperature (°C) among psutil's sensors, preferring known CPU drivers; None if none."""
    names = [n for n in _PREFERRED_SENSORS if n in sensors] + sorted(set(sensors) - set(_PREFERRED_SENSORS))
    for name in names:
        for entry in sensors[name]:
            value = getattr(entry, "current", None)
            if isinstance(value, int | float) and value != 0 and _TEMP_RANGE[0] <= value <= _TEMP_RANGE[1]:
                return float(value)
    return None


def _uptime_clock(boot_time: float) -> Callable[[], float]:
    """Seconds since boot: CLOCK_BOOTTIME where there is one (immune to wall-clock steps)."""
    clock_id = getattr(time, "CLOCK_BOOTTIME", None)
    if clock_id is not None:
        return lambda: time.clock_gettime(clock_id)
    return lambda: time.time() - boot_time


class PsutilSampler:
    """Reads the host with psutil: a handful of /proc reads and syscalls per sample, no blocking."""

    def __init__(self, *, disk_path: str = "/", clock: Callable[[], float] = time.monotonic) -> None:
        self._disk_path = disk_path
        self._clock = clock
        self._uptime = _uptime_clock(psutil.boot_time())
        psutil.cpu_percent(interval=None)  # priming: the next call measures from here without sleeping
        # Absent on macOS and Windows; on Linux a host without sensors stays without them.
        self._has_temp = hasattr(psutil, "sensors_temperatures")
        self._temp: float | None = None
        self._temp_at = -math.inf
        self._readers = (
            self._read_cpu_memory,
            self._read_disk,
            self._read_net,
            self._read_load,
            self._read_uptime,
            self._read_temperature,
        )

    def sample(self) -> dict[str, float]:
        """The host's readings now; a source that cannot be read is left out, not the whole sample."""
        out: dict[str, float] = {}
        for read in self._readers:
            try:
                read(out)
            except (OSError, RuntimeError, ValueError, psutil.Error):
                continue
        return bounded(out)

    def _read_cpu_memory(self, out: dict[str, float]) -> None:
        out["cpu"] = psutil.cpu_percent(interval=None)
        out["memory"] = psutil.virtual_memory().percent

    def _read_disk(self, out: dict[str, float]) -> None:
        out["disk"] = psutil.disk_usage(self._disk_path).percent

    def _read_net(self, out: dict[str, float]) -> None:
        net = psutil.net_io_counters(pernic=False)
        if net is not None:  # None on hosts without network interfaces
            out["net_bytes_sent"] = net.bytes_sent
            out["net_bytes_recv"] = net.bytes_recv

    def _read_load(self, out: dict[str, float]) -> None:
        # os.getloadavg, not psutil's: on Windows psutil emulates it with a background thread.
        if hasattr(os, "getloadavg"):
            out["load_1"], out["load_5"], out["load_15"] = os.getloadavg()

    def _read_uptime(self, out: dict[str, float]) -> None:
        out["uptime"] = self._uptime()

    def _read_temperature(self, out: dict[str, float]) -> None:
        now = self._clock()
        if self._has_temp and now - self._temp_at >= _TEMP_REFRESH_S:
            self._temp_at = now
            sensors = psutil.sensors_temperatures()
            self._has_temp = bool(sensors)
            self._temp = pick_temperature(sensors)
        if self._temp is not None:
            out["temperature"] = self._temp


# A 64-bit LCG (Knuth's MMIX constants) instead of random.Random: the Mersenne Twister keeps ~2.9 KB
# of state per instance, 29 MB for the simulator's 10,000 samplers; this keeps one int.
_M64 = (1 << 64) - 1
_LCG_A = 6364136223846793005
_LCG_C = 1442695040888963407
_INV53 = 1.0 / (1 << 53)
_INV15 = 1.0 / (1 << 15)
_BOOT_BASE = 1_767_225_600.0  # 2026-01-01 UTC; simulated boots are up to 30 days before it
_MAX_STEP_S = 3600.0  # a suspended simulator does not make counters jump by days


def _mix(seed: int) -> int:
    """splitmix64's finalizer, so seeds 1, 2, 3 start far apart."""
    z = (seed + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _walk(x: float, mean: float, step: float, noise: float, lo: float, hi: float) -> float:
    """One step of a mean-reverting random walk, kept within [lo, hi]."""
    x += 0.1 * (mean - x) + step * noise
    return lo if x < lo else hi if x > hi else x


class MockSampler:
    """Synthetic, plausible readings: seeded mean-reverting walks, growing counters and uptime."""

    __slots__ = (
        "_clock", "_cores", "_cpu", "_cpu_mean", "_disk", "_last", "_load1", "_load5", "_load15",
        "_mem", "_mem_mean", "_recv", "_recv_rate", "_sent", "_sent_rate", "_start", "_state",
        "_temp_base", "_uptime0",
    )  # fmt: skip

    def __init__(
        self,
        seed: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._state = _mix(seed if seed is not None else int.from_bytes(os.urandom(8), "big"))
        self._clock = clock
        self._start = self._last = clock()
        u = self._unit
        self._cpu_mean = self._cpu = 5.0 + 50.0 * u()  # each device has its own typical load
        self._mem_mean = self._mem = 20.0 + 60.0 * u()
        self._disk = 10.0 + 70.0 * u()
        self._cores = (1, 2, 4, 8)[int(4 * u())]
        self._load1 = self._load5 = self._load15 = self._cores * self._cpu / 100.0
        self._sent_rate, self._recv_rate = 1e3 + 5e4 * u(), 2e3 + 2e5 * u()  # bytes/s
        # The simulated device booted at a time fixed by the seed: an agent restarted with the same
        # seed (the device id's) reports an uptime and counters that carried on, not new ones.
        self._uptime0 = max(wall() - (_BOOT_BASE - 30 * 86400.0 * u()), 60.0)
        self._sent, self._recv = int(self._sent_rate * self._uptime0), int(self._recv_rate * self._uptime0)
        self._temp_base = 35.0 + 15.0 * u()

    def _unit(self) -> float:
        """The next uniform number in [0, 1) (the LCG's upper 53 bits)."""
        self._state = s = (self._state * _LCG_A + _LCG_C) & _M64
        return (s >> 11) * _INV53

    def sample(self) -> dict[str, float]:
        """The next synthetic readings; rates and uptime follow the clock, walks move once per call."""
        now = self._clock()
        dt = min(max(now - self._last, 0.0), _MAX_STEP_S)
        self._last = now
        # Two LCG steps give four 16-bit noises in [-1, 1): inline, since a method call per draw
        # was half the cost of a sample.
        a = (self._state * _LCG_A + _LCG_C) & _M64
        self._state = b = (a * _LCG_A + _LCG_C) & _M64
        self._cpu = cpu = _walk(self._cpu, self._cpu_mean, 6.0, ((a >> 48) - 0x8000) * _INV15, 0.0, 100.0)
        self._mem = _walk(self._mem, self._mem_mean, 1.5, (((a >> 32) & 0xFFFF) - 0x8000) * _INV15, 1.0, 99.0)
        self._disk = _walk(self._disk, self._disk, 0.02, ((b >> 48) - 0x8000) * _INV15, 1.0, 99.0)
        burst = 1.0 + (((b >> 32) & 0xFFFF) - 0x8000) * _INV15 / 2  # traffic within 0.5..1.5 x rate
        # Counters would need a century of simulated time to reach the 1e15 limit.
        self._sent += int(self._sent_rate * dt * burst)
        self._recv += int(self._recv_rate * dt * burst)
        # Load averages as the kernel keeps them: exponentially damped over 1, 5 and 15 minutes.
        self._load1 += (self._cores * cpu / 100.0 - self._load1) * min(dt / 60.0, 1.0)
        self._load5 += (self._load1 - self._load5) * min(dt / 300.0, 1.0)
        self._load15 += (self._load1 - self._load15) * min(dt / 900.0, 1.0)
        return {
            "cpu": cpu,
            "memory": self._mem,
            "disk": self._disk,
            "net_bytes_sent": self._sent,
            "net_bytes_recv": self._recv,
            "load_1": self._load1,
            "load_5": self._load5,
            "load_15": self._load15,
            "uptime": self._uptime0 + (now - self._start),
            "temperature": self._temp_base + 0.35 * cpu,
        }
