"""The agent's samplers always produce readings the telemetry service accepts as plausible."""

from __future__ import annotations

import itertools
import math
import re
from collections import namedtuple
from typing import Any

import psutil
import pytest

from agent.metrics import MockSampler, PsutilSampler, bounded, make_sampler, pick_temperature

# The server's rules (docs/telemetry.md, agent protocol), copied as the oracle rather than imported:
# the agent must not depend on services, and a drift between the two should fail here.
NAME = re.compile(r"^[A-Za-z0-9_.:/-]{1,64}$")
PERCENTS = {"cpu", "memory", "disk"}
COUNTERS = ("net_bytes_sent", "net_bytes_recv")


def server_problems(readings: dict[str, Any]) -> list[str]:
    """What the telemetry service would refuse or flag in ``readings``."""
    problems = [] if len(readings) <= 64 else ["more than 64 metrics"]
    for name, value in readings.items():
        if not NAME.match(name):
            problems.append(f"{name}: bad name")
        elif isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            problems.append(f"{name}: not a finite number")
        elif (name in PERCENTS or name.endswith("_percent")) and not 0 <= value <= 100:
            problems.append(f"{name}: percent outside 0..100")
        elif name == "uptime" and value < 0:
            problems.append("uptime: negative")
        elif abs(value) > 1e15:
            problems.append(f"{name}: beyond 1e15")
    return problems


class FakeClock:
    """A clock the test moves."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def run_mock(seed: int, steps: int, dt: float = 1.0, wall: float = 1_780_000_000.0) -> list[dict[str, float]]:
    clock = FakeClock()
    sampler = MockSampler(seed, clock=clock, wall=lambda: wall)
    out = []
    for _ in range(steps):
        clock.t += dt
        out.append(sampler.sample())
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 42, 2**64 + 5, -7])
@pytest.mark.parametrize("dt", [0.0, 1.0, 30.0, 86_400.0])
def test_mock_readings_always_pass_the_server_rules(seed: int, dt: float) -> None:
    for readings in run_mock(seed, 2000, dt):
        assert server_problems(readings) == []
        assert {"cpu", "memory", "uptime"} <= readings.keys()


def test_mock_is_deterministic_for_a_seed() -> None:
    assert run_mock(7, 200) == run_mock(7, 200)
    assert run_mock(7, 200) != run_mock(8, 200)


def test_a_restarted_mock_device_carries_on_its_uptime_and_counters() -> None:
    """Same seed (the device id's) ten minutes later: uptime and counters continued, not restarted."""
    before, after = run_mock(5, 1)[0], run_mock(5, 1, wall=1_780_000_600.0)[0]
    assert after["uptime"] - before["uptime"] == pytest.approx(600.0)
    for name in COUNTERS:
        assert after[name] > before[name]


def test_make_sampler_mock_is_deterministic_apart_from_the_clock() -> None:
    a, b = make_sampler(True, seed=3), make_sampler(True, seed=3)
    walks = ("cpu", "memory", "disk", "temperature")
    for _ in range(50):
        ra, rb = a.sample(), b.sample()
        assert {k: ra[k] for k in walks} == {k: rb[k] for k in walks}


def test_mock_counters_and_uptime_only_grow() -> None:
    samples = run_mock(11, 500, dt=5.0)
    for before, after in itertools.pairwise(samples):
        for name in (*COUNTERS, "uptime"):
            assert after[name] >= before[name]
    assert samples[-1]["uptime"] - samples[0]["uptime"] == pytest.approx(499 * 5.0)
    assert samples[-1]["net_bytes_recv"] > samples[0]["net_bytes_recv"]


def test_mock_walks_move_smoothly() -> None:
    samples = run_mock(5, 1000)
    cpus = [s["cpu"] for s in samples]
    assert max(abs(b - a) for a, b in itertools.pairwise(cpus)) < 15
    assert len({round(c) for c in cpus}) > 5  # it moves


def test_mock_devices_differ() -> None:
    firsts = {round(run_mock(seed, 1)[0]["memory"], 6) for seed in range(20)}
    assert len(firsts) == 20


def test_unseeded_mock_samplers_differ() -> None:
    assert MockSampler().sample()["memory"] != MockSampler().sample()["memory"]


def test_psutil_readings_pass_the_server_rules() -> None:
    sampler = make_sampler(False)
    for _ in range(3):
        readings = sampler.sample()
        assert server_problems(readings) == []
        assert {"cpu", "memory", "disk", "uptime", *COUNTERS} <= readings.keys()
        assert readings.get("temperature") != 0


def test_psutil_counters_and_uptime_only_grow() -> None:
    sampler = PsutilSampler()
    first = sampler.sample()
    second = sampler.sample()
    for name in (*COUNTERS, "uptime"):
        assert second[name] >= first[name]


def test_psutil_leaves_out_a_source_that_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    sampler = PsutilSampler()

    def broken(path: str) -> None:
        raise OSError("no such mount")

    monkeypatch.setattr(psutil, "disk_usage", broken)
    readings = sampler.sample()
    assert "disk" not in readings
    assert "cpu" in readings and "memory" in readings


def test_temperature_absent_when_the_host_has_no_sensor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psutil, "sensors_temperatures", lambda: {}, raising=False)
    assert "temperature" not in PsutilSampler().sample()


def test_temperature_present_when_a_sensor_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psutil, "sensors_temperatures", lambda: {"cpu_thermal": [Temp(51.5)]}, raising=False)
    assert PsutilSampler().sample()["temperature"] == 51.5


Temp = namedtuple("Temp", "current")


def test_pick_temperature_prefers_the_cpu_and_skips_broken_sensors() -> None:
    sensors = {
        "acpitz": [Temp(27.8)],
        "coretemp": [Temp(float("nan")), Temp(0.0), Temp(64.0)],
        "nvme": [Temp(40.0)],
    }
    assert pick_temperature(sensors) == 64.0
    assert pick_temperature({"acpitz": [Temp(-273.0)], "nvme": [Temp(38.0)]}) == 38.0
    assert pick_temperature({"x": [Temp(0.0)], "y": [Temp(float("inf"))]}) is None
    assert pick_temperature({}) is None


def test_bounded_makes_any_reading_acceptable() -> None:
    raw: dict[str, Any] = {
        "cpu": 100.4,
        "memory": -0.1,
        "disk": float("nan"),
        "uptime": -3.0,
        "load_1": float("inf"),
        "net_bytes_sent": 2e15,
        "fan_percent": 180,
        "flag": True,
        "text": "12",
    }
    out = bounded(raw)
    assert out == {"cpu": 100.0, "memory": 0.0, "uptime": 0.0, "net_bytes_sent": 1e15, "fan_percent": 100.0}
    assert server_problems(out) == []


def test_a_mock_sampler_is_small() -> None:
    # The simulator keeps 10,000 of them: slots, and one int of random state.
    sampler = MockSampler(1)
    assert not hasattr(sampler, "__dict__")
    assert isinstance(sampler._state, int)
