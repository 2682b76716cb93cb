"""bench/load.py's pure parts: loopback refusal, arguments, the locust command line, the stats CSV.

Locust itself never runs (nor is imported) in the test process: it patches the standard library
through gevent. load.py imports only the standard library at module level, which is checked here.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

LOAD_PY = Path(__file__).resolve().parents[2] / "bench" / "load.py"


def _load():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_load_under_test", LOAD_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


load = _load()

STATS_CSV = """\
Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,\
Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,\
99.99%,100%
POST,/api/v1/device/heartbeat,118000,0,9,10.2,1,180,95,1966.6,0.0,9,11,12,13,15,18,24,31,90,170,180
POST,/api/v1/device/heartbeat [429],40,40,3,3.1,2,5,60,0.66,0.66,3,3,3,4,4,5,5,5,5,5,5
,Aggregated,118040,40,9,10.2,1,180,95,1967.3,0.66,9,11,12,13,15,18,24,31,90,170,180
"""


def test_importing_load_py_pulls_in_neither_locust_nor_gevent() -> None:
    assert "locust" not in sys.modules
    assert "gevent" not in sys.modules


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080",
        "http://127.0.0.1:8080/",
        "http://localhost:9",
        "http://[::1]:80",
        "http://127.0.0.2",
    ],
)
def test_loopback_targets_are_accepted(url: str) -> None:
    assert load.check_loopback(url) == url.rstrip("/")


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1:8080",
        "http://192.168.1.20",
        "http://example.com",
        "http://127.0.0.1.example.com",
        "https://0.0.0.0:8080",
        "ftp://127.0.0.1",
        "127.0.0.1:8080",
        "http://user:secret@127.0.0.1:8080",
        "http://127.0.0.1:8080/?token=abc",
    ],
)
def test_anything_but_loopback_is_refused(url: str) -> None:
    with pytest.raises(load.UsageError):
        load.check_loopback(url)


def test_defaults_depend_on_the_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEET_URL", raising=False)
    realistic = load.parse_args([])
    assert realistic.url == "http://127.0.0.1:8080"
    # one interval (30 s) of spawning spreads the device-users' phases evenly: a steady rate
    assert (realistic.users, realistic.devices) == (1000, 1000)
    assert realistic.spawn_rate == pytest.approx(1000 / 30)
    assert realistic.timeout > realistic.duration
    flat_out = load.parse_args(["--max", "--duration", "30"])
    assert (flat_out.users, flat_out.spawn_rate, flat_out.duration) == (64, 64, 30)


def test_the_target_from_the_environment_is_checked_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_URL", "http://203.0.113.9:8080")
    with pytest.raises(load.UsageError):
        load.parse_args([])


@pytest.mark.parametrize(
    "argv",
    [
        ["--devices", "0"],
        ["--duration", "-1"],
        ["--users", "0"],
        ["--duration", "60", "--timeout", "61"],
        ["--wrk"],  # wrk's device logins need a platform started with the raised rate limit
    ],
)
def test_bad_numbers_are_refused(argv: list[str]) -> None:
    with pytest.raises(load.UsageError):
        load.parse_args(argv)


def test_the_locust_command_line_is_headless_bounded_and_secret_free(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FLEET_PASSWORD", "hunter2-hunter2")
    args = load.parse_args(["--max", "--users", "32", "--duration", "20"])
    argv = load.locust_argv(args, "http://127.0.0.1:8080", tmp_path / "run")
    assert argv[1:3] == ["-m", "locust"] and "--headless" in argv
    assert argv[argv.index("-u") + 1] == "32"
    assert argv[argv.index("-t") + 1] == f"{round(args.timeout)}s"  # the bound; FLEET_RUN_S ends the load
    assert argv[argv.index("--host") + 1] == "http://127.0.0.1:8080"
    assert not any("hunter2" in a for a in argv)


def test_the_aggregated_row_and_the_failures_by_status() -> None:
    stats = load.parse_stats(STATS_CSV)
    assert (stats.requests, stats.failures) == (118040, 40)
    assert stats.rps == pytest.approx(1967.3)
    assert (stats.p50, stats.p95, stats.p99, stats.max) == (9, 18, 31, 180)
    assert stats.by_name["/api/v1/device/heartbeat [429]"] == 40


def test_no_requests_at_all_parses_as_zeros() -> None:
    header = STATS_CSV.splitlines()[0]
    empty = header + "\n,Aggregated,0,0,0,0,0,0,0,0.0,0.0,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A\n"
    stats = load.parse_stats(empty)
    assert (stats.requests, stats.rps, stats.p99) == (0, 0.0, 0.0)


def test_a_csv_without_the_aggregated_row_is_an_error() -> None:
    with pytest.raises(ValueError):
        load.parse_stats(STATS_CSV.splitlines()[0] + "\n")


def test_the_operator_comes_from_the_environment_or_demo_json(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("FLEET_TOKEN", "FLEET_EMAIL", "FLEET_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    demo = tmp_path / "demo.json"
    args = load.parse_args(["--demo-json", str(demo)])
    with pytest.raises(load.UsageError):
        load.operator_env(args)
    demo.write_text(json.dumps({"owner_email": "owner@fleet.local", "owner_password": "pw-from-file"}))
    assert load.operator_env(args) == {"FLEET_EMAIL": "owner@fleet.local", "FLEET_PASSWORD": "pw-from-file"}
    monkeypatch.setenv("FLEET_TOKEN", "tok")
    assert load.operator_env(args) == {}
