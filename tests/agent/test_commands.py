"""The agent's command handlers: each command, the run_script allow-list, and the server's limits."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent import commands
from agent.commands import (
    MAX_ERROR,
    MAX_OUTPUT,
    CommandContext,
    CommandFailed,
    CommandOutcome,
    CommandRegistry,
    default_registry,
)

# The server's limits (services/commands/dialects.py), copied as the oracle.
SERVER_MAX_OUTPUT, SERVER_MAX_ERROR, SERVER_MAX_RESULT = 10 * 1024, 5 * 1024, 64 * 1024
GATEWAY_MAX_FRAME = 65_536  # services/gateway/config.py: a larger frame closes the agent's socket


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie waiting for its reaper does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def within_server_limits(outcome: CommandOutcome) -> bool:
    """Whether the server would take this outcome as it is."""
    sizes = (len((outcome.output or "").encode()), len((outcome.error or "").encode()))
    result = len(json.dumps(outcome.result).encode()) if outcome.result is not None else 0
    frame: dict[str, Any] = {
        "type": "result",
        "command_id": "0" * 36,
        "status": outcome.status,
        "result": outcome.result,
    }
    frame |= {"error": outcome.error, "output": outcome.output, "duration_ms": outcome.duration_ms}
    frame |= {"executed_at": "2026-11-26T01:00:00.000000+00:00"}
    return (
        len(json.dumps(frame, ensure_ascii=False).encode()) <= GATEWAY_MAX_FRAME - 1_000
        and sizes[0] <= min(SERVER_MAX_OUTPUT, 10_000)
        and sizes[1] <= min(SERVER_MAX_ERROR, 5_000)
        and result <= SERVER_MAX_RESULT
        and outcome.status in ("succeeded", "failed")
    )


class Agent:
    """Records what handlers asked of the runner."""

    def __init__(self) -> None:
        self.restarts = 0
        self.configs: list[dict[str, Any]] = []

    def request_restart(self) -> None:
        self.restarts += 1

    def apply_config(self, config: dict[str, Any]) -> dict[str, Any]:
        self.configs.append(config)
        return {"heartbeat_interval_s": 30, **config}


@pytest.fixture
def agent() -> Agent:
    return Agent()


@pytest.fixture
def ctx(tmp_path: Path, agent: Agent) -> CommandContext:
    (tmp_path / "state").mkdir()
    (tmp_path / "scripts").mkdir()
    return CommandContext(
        mock=True,
        state_dir=tmp_path / "state",
        scripts_dir=tmp_path / "scripts",
        request_restart=agent.request_restart,
        apply_config=agent.apply_config,
    )


@pytest.fixture
def script(ctx: CommandContext) -> Callable[..., Path]:
    def make(name: str, body: str, mode: int = 0o755, where: Path | None = None) -> Path:
        path = (where or ctx.scripts_dir) / name
        path.write_text("#!/bin/sh\n" + body + "\n")
        path.chmod(mode)
        return path

    return make


async def run(ctx: CommandContext, command_type: str, params: Any = None) -> CommandOutcome:
    outcome = await default_registry().run(command_type, params or {}, ctx)
    assert within_server_limits(outcome), outcome
    assert outcome.duration_ms >= 0
    return outcome


def test_default_registry_names() -> None:
    names = default_registry().names()
    assert names == sorted(["ping", "restart", "reboot", "update_config", "collect_logs", "run_script"])


async def test_ping_answers_and_echoes_small_parameters(ctx: CommandContext) -> None:
    outcome = await run(ctx, "ping", {"hello": "world"})
    assert outcome.status == "succeeded"
    assert outcome.result is not None
    assert outcome.result["pong"] is True and outcome.result["echo"] == {"hello": "world"}
    assert outcome.result["at"].endswith("+00:00")


async def test_ping_omits_a_large_echo(ctx: CommandContext) -> None:
    outcome = await run(ctx, "ping", {"blob": "x" * 100_000})
    assert outcome.result is not None
    assert "echo" not in outcome.result and outcome.result["echo_omitted_bytes"] > 100_000


async def test_unknown_command_type_fails(ctx: CommandContext) -> None:
    outcome = await run(ctx, "self_destruct")
    assert outcome.status == "failed"
    assert outcome.error is not None and outcome.error.startswith("unknown command type")


async def test_a_handler_exception_fails_with_its_message_only(ctx: CommandContext) -> None:
    async def broken(params: dict[str, Any], ctx: CommandContext) -> CommandOutcome:
        raise KeyError("wheel")

    registry = CommandRegistry()
    registry.register("broken", broken)
    outcome = await registry.run("broken", {}, ctx)
    assert outcome == CommandOutcome("failed", error="KeyError: 'wheel'", duration_ms=outcome.duration_ms)
    assert "Traceback" not in (outcome.error or "")


async def test_outcomes_are_clipped_to_the_server_limits(ctx: CommandContext) -> None:
    async def chatty(params: dict[str, Any], ctx: CommandContext) -> CommandOutcome:
        return CommandOutcome(
            "failed", result={"big": "é" * 100_000}, error="ü" * 9_000, output="x\x00" * 50_000
        )

    registry = CommandRegistry()
    registry.register("chatty", chatty)
    outcome = await registry.run("chatty", {}, ctx)
    assert within_server_limits(outcome)
    assert outcome.result == {"truncated": True, "bytes": 200_011}
    assert outcome.output == "x" * MAX_OUTPUT and outcome.error == "ü" * (MAX_ERROR // 2)


async def test_an_outcome_that_escapes_badly_still_fits_one_frame(ctx: CommandContext) -> None:
    async def control(params: dict[str, Any], ctx: CommandContext) -> CommandOutcome:
        result = {"data": "\x01" * 6_000}  # 36 KB once escaped
        return CommandOutcome("failed", result=result, error='"' * 9_000, output="\x1b[0m\x07" * 9_000)

    registry = CommandRegistry()
    registry.register("control", control)
    outcome = await registry.run("control", {}, ctx)
    assert within_server_limits(outcome)
    assert outcome.error == '"' * (MAX_ERROR // 2)
    assert outcome.output is not None and len(json.dumps(outcome.output)) - 2 <= MAX_OUTPUT


async def test_lone_surrogates_never_break_an_outcome(ctx: CommandContext) -> None:
    outcome = await run(ctx, "ping", {"bad": "\ud800"})
    assert outcome.result is not None and outcome.result["echo"] == {"bad": "?"}
    outcome = await run(ctx, "\udfff")
    assert outcome.status == "failed" and outcome.error is not None
    outcome.error.encode()


async def test_restart_asks_the_runner(ctx: CommandContext, agent: Agent) -> None:
    outcome = await run(ctx, "restart")
    assert outcome.status == "succeeded" and outcome.result == {"restart": "scheduled"}
    assert agent.restarts == 1


async def test_reboot_needs_confirmation(ctx: CommandContext) -> None:
    for params in ({}, {"confirm": "yes"}, {"confirm": 1}):
        outcome = await run(ctx, "reboot", params)
        assert outcome.status == "failed" and "confirm" in (outcome.error or "")


async def test_reboot_is_faked_in_mock_mode(ctx: CommandContext) -> None:
    outcome = await run(ctx, "reboot", {"confirm": True})
    assert outcome.status == "succeeded" and outcome.result == {"rebooted": False, "mock": True}


async def test_a_real_reboot_needs_the_env_switch(
    ctx: CommandContext, monkeypatch: pytest.MonkeyPatch, script: Callable[..., Path], tmp_path: Path
) -> None:
    marker = tmp_path / "rebooted"
    fake = script("fake-reboot", f"touch {marker}", where=tmp_path)
    monkeypatch.setattr(commands, "REBOOT_COMMANDS", ((str(fake),),))
    real = dataclasses.replace(ctx, mock=False)
    monkeypatch.delenv("FLEET_AGENT_ALLOW_REBOOT", raising=False)
    outcome = await run(real, "reboot", {"confirm": True})
    assert outcome.status == "failed" and "FLEET_AGENT_ALLOW_REBOOT" in (outcome.error or "")
    assert not marker.exists()

    monkeypatch.setenv("FLEET_AGENT_ALLOW_REBOOT", "true")
    outcome = await run(real, "reboot", {"confirm": True})
    assert outcome.status == "succeeded" and outcome.result is not None and outcome.result["rebooted"] is True
    assert marker.exists()


async def test_update_config_validates_then_applies(ctx: CommandContext, agent: Agent) -> None:
    params = {"heartbeat_interval_s": 5, "log_level": "debug", "metrics": ["cpu", "memory", "cpu"]}
    outcome = await run(ctx, "update_config", params)
    assert outcome.status == "succeeded"
    assert agent.configs == [{"heartbeat_interval_s": 5, "log_level": "DEBUG", "metrics": ["cpu", "memory"]}]
    assert outcome.result == {
        "applied": {"heartbeat_interval_s": 5, "log_level": "DEBUG", "metrics": ["cpu", "memory"]}
    }
    assert (await run(ctx, "update_config", {"config": {"log_level": "info"}})).status == "succeeded"
    assert agent.configs[-1] == {"log_level": "INFO"}
    params = {"metrics": None, "backoff_base_s": 0.5, "backoff_cap_s": 30, "offline_sample_every": 5}
    assert (await run(ctx, "update_config", params)).status == "succeeded"
    assert agent.configs[-1] == params


async def test_update_config_fails_when_the_runner_refuses(ctx: CommandContext) -> None:
    def refuse(config: dict[str, Any]) -> dict[str, Any]:
        raise ValueError("backoff_cap_s must be >= backoff_base_s")

    outcome = await run(dataclasses.replace(ctx, apply_config=refuse), "update_config", {"backoff_cap_s": 1})
    assert (
        outcome.status == "failed" and outcome.error == "ValueError: backoff_cap_s must be >= backoff_base_s"
    )


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({}, "at least one"),
        ({"heartbeat_interval_s": 0}, "heartbeat_interval_s"),
        ({"heartbeat_interval_s": True}, "heartbeat_interval_s"),
        ({"heartbeat_interval_s": "5"}, "heartbeat_interval_s"),
        ({"log_level": "LOUD"}, "log_level"),
        ({"metrics": ["bad name!"]}, "metrics"),
        ({"metrics": "cpu"}, "metrics"),
        ({"log_level": "INFO", "shell": "rm -rf /"}, "shell: unknown setting"),
        ({"offline_sample_every": 2.5}, "offline_sample_every"),
        ({"backoff_cap_s": float("nan")}, "backoff_cap_s"),
        ({"backoff_base_s": 0}, "backoff_base_s"),
    ],
)
async def test_update_config_refuses_bad_settings(
    ctx: CommandContext, agent: Agent, params: dict[str, Any], problem: str
) -> None:
    outcome = await run(ctx, "update_config", params)
    assert outcome.status == "failed" and problem in (outcome.error or "")
    assert agent.configs == []


async def test_collect_logs_tails_the_log_files(ctx: CommandContext) -> None:
    (ctx.state_dir / "agent.log").write_text("".join(f"line {i}\n" for i in range(500)))
    outcome = await run(ctx, "collect_logs", {"lines": 3})
    assert outcome.status == "succeeded" and outcome.result == {"files": ["agent.log"], "lines": 3}
    assert outcome.output == "==> agent.log <==\nline 497\nline 498\nline 499"


async def test_collect_logs_bounds_lines_and_keeps_the_newest_output(ctx: CommandContext) -> None:
    (ctx.state_dir / "agent.log").write_text("".join(f"{i:06d} {'x' * 100}\n" for i in range(5_000)))
    outcome = await run(ctx, "collect_logs", {"lines": 10**9})
    assert outcome.result is not None and outcome.result["lines"] == commands.LOG_LINES_MAX
    assert outcome.output is not None and outcome.output.endswith(f"004999 {'x' * 100}")
    assert (await run(ctx, "collect_logs", {"lines": "all"})).status == "failed"


async def test_collect_logs_without_logs_fails(ctx: CommandContext) -> None:
    outcome = await run(ctx, "collect_logs")
    assert outcome.status == "failed" and "no log files" in (outcome.error or "")


async def test_run_script_runs_an_allowed_script(ctx: CommandContext, script: Callable[..., Path]) -> None:
    script("hello.sh", 'echo "hello $1 $2"; echo warn >&2')
    outcome = await run(ctx, "run_script", {"name": "hello.sh", "args": ["a b", "$HOME;ls"]})
    assert outcome.status == "succeeded", outcome
    assert outcome.output == "hello a b $HOME;ls\n"  # no shell: arguments arrive as given
    assert outcome.result is not None
    assert outcome.result["exit_code"] == 0 and outcome.result["stderr"] == "warn\n"


async def test_run_script_reports_a_failing_exit(ctx: CommandContext, script: Callable[..., Path]) -> None:
    script("fail.sh", "echo partial; echo broken >&2; exit 3")
    outcome = await run(ctx, "run_script", {"name": "fail.sh"})
    assert outcome.status == "failed" and outcome.error == "exit code 3: broken"
    assert outcome.output == "partial\n" and outcome.result is not None and outcome.result["exit_code"] == 3


@pytest.mark.parametrize(
    "name", ["../x.sh", "/bin/sh", "sub/x.sh", "..", ".", ".hidden", "", "x\x00.sh", "a\\b", 7, None]
)
async def test_run_script_refuses_names_outside_the_allow_list(
    ctx: CommandContext, script: Callable[..., Path], tmp_path: Path, name: Any
) -> None:
    script("x.sh", f"touch {tmp_path / 'ran'}", where=tmp_path)
    (ctx.scripts_dir / "sub").mkdir()
    script("x.sh", f"touch {tmp_path / 'ran'}", where=ctx.scripts_dir / "sub")
    outcome = await run(ctx, "run_script", {"name": name})
    assert outcome.status == "failed"
    assert not (tmp_path / "ran").exists()


async def test_run_script_refuses_a_symlink_out(
    ctx: CommandContext, script: Callable[..., Path], tmp_path: Path
) -> None:
    outside = script("evil.sh", f"touch {tmp_path / 'ran'}", where=tmp_path)
    (ctx.scripts_dir / "evil.sh").symlink_to(outside)
    outcome = await run(ctx, "run_script", {"name": "evil.sh"})
    assert outcome.status == "failed" and "not a script of the scripts directory" in (outcome.error or "")
    assert not (tmp_path / "ran").exists()


async def test_run_script_follows_a_symlink_inside(ctx: CommandContext, script: Callable[..., Path]) -> None:
    script("real.sh", "echo real")
    (ctx.scripts_dir / "alias.sh").symlink_to(ctx.scripts_dir / "real.sh")
    assert (await run(ctx, "run_script", {"name": "alias.sh"})).output == "real\n"


async def test_run_script_refuses_missing_unexecutable_and_world_writable(
    ctx: CommandContext, script: Callable[..., Path]
) -> None:
    script("plain.sh", "echo hi", mode=0o644)
    script("open.sh", "echo hi", mode=0o777)
    (ctx.scripts_dir / "dir.sh").mkdir()
    errors = {}
    for name in ("plain.sh", "open.sh", "missing.sh", "dir.sh"):
        outcome = await run(ctx, "run_script", {"name": name})
        assert outcome.status == "failed"
        errors[name] = outcome.error or ""
    assert "not executable" in errors["plain.sh"] and "writable by everyone" in errors["open.sh"]
    assert "no script" in errors["missing.sh"] and "not a script" in errors["dir.sh"]


@pytest.mark.parametrize(
    "params",
    [
        {"args": "a b"},
        {"args": [1]},
        {"args": ["x"] * 65},
        {"timeout_s": 0},
        {"timeout_s": -1},
        {"timeout_s": "5"},
        {"timeout_s": True},
        {"timeout_s": float("nan")},
    ],
)
async def test_run_script_refuses_bad_parameters(
    ctx: CommandContext, script: Callable[..., Path], params: dict[str, Any]
) -> None:
    script("ok.sh", "echo ok")
    assert (await run(ctx, "run_script", {"name": "ok.sh", **params})).status == "failed"


async def test_run_script_timeout_kills_the_process_group(
    ctx: CommandContext, script: Callable[..., Path], tmp_path: Path
) -> None:
    pidfile = tmp_path / "child.pid"
    # The child keeps the pipes open: only killing the whole group ends the run in time.
    script("hang.sh", f"echo started; sleep 60 & echo $! > {pidfile}; wait")
    started = time.monotonic()
    outcome = await run(ctx, "run_script", {"name": "hang.sh", "timeout_s": 0.5})
    assert time.monotonic() - started < 5
    assert outcome.status == "failed" and outcome.error == "timed out after 0.5 s"
    assert outcome.output == "started\n"
    assert outcome.result is not None and outcome.result["timed_out"] is True
    await asyncio.sleep(0.1)
    assert not alive(int(pidfile.read_text()))


async def test_run_script_clamps_the_timeout(ctx: CommandContext, script: Callable[..., Path]) -> None:
    script("ok.sh", "true")
    outcome = await run(ctx, "run_script", {"name": "ok.sh", "timeout_s": 10_000})
    assert outcome.result is not None and outcome.result["timeout_s"] == commands.SCRIPT_TIMEOUT_MAX_S
    outcome = await run(ctx, "run_script", {"name": "ok.sh"})
    assert outcome.result is not None and outcome.result["timeout_s"] == commands.SCRIPT_TIMEOUT_DEFAULT_S


async def test_run_script_output_is_truncated(ctx: CommandContext, script: Callable[..., Path]) -> None:
    script("loud.sh", "yes abcdefgh | head -c 2000000; yes err | head -c 100000 >&2; exit 1")
    outcome = await run(ctx, "run_script", {"name": "loud.sh"})
    assert outcome.status == "failed"
    assert outcome.output is not None and len(json.dumps(outcome.output)) - 2 == MAX_OUTPUT  # "\n" is 2
    assert outcome.output.startswith("abcdefgh\nabcdefgh\n")
    assert outcome.error is not None and outcome.error.startswith("exit code 1: err\nerr\n")
    assert outcome.result is not None
    assert outcome.result["stdout_bytes"] == 2_000_000 and outcome.result["output_truncated"] is True


async def test_run_script_cancelled_kills_the_script(
    ctx: CommandContext, script: Callable[..., Path], tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"
    script("long.sh", f"echo $$ > {pidfile}; sleep 60")
    task = asyncio.create_task(default_registry().run("run_script", {"name": "long.sh"}, ctx))
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.1)
    assert not alive(int(pidfile.read_text()))


def test_command_failed_carries_output() -> None:
    e = CommandFailed("nope", output="out")
    assert str(e) == "nope" and e.output == "out"


async def test_a_real_reboot_tries_the_next_command_when_one_fails(
    ctx: CommandContext, monkeypatch: pytest.MonkeyPatch, script: Callable[..., Path], tmp_path: Path
) -> None:
    real = dataclasses.replace(ctx, mock=False)
    monkeypatch.setenv("FLEET_AGENT_ALLOW_REBOOT", "TRUE")
    failing = script(
        "no-systemd", "echo 'System has not been booted with systemd' >&2; exit 1", where=tmp_path
    )
    working = script("reboot", "true", where=tmp_path)
    monkeypatch.setattr(
        commands, "REBOOT_COMMANDS", ((str(failing),), ("/nonexistent/reboot",), (str(working),))
    )
    outcome = await run(real, "reboot", {"confirm": True})
    assert outcome.status == "succeeded" and outcome.result is not None
    assert outcome.result["command"] == [str(working)]

    monkeypatch.setattr(commands, "REBOOT_COMMANDS", ((str(failing),), ("/nonexistent/reboot",)))
    outcome = await run(real, "reboot", {"confirm": True})
    assert outcome.status == "failed"
    assert outcome.error == f"{failing} exited 1: System has not been booted with systemd"

    monkeypatch.setattr(commands, "REBOOT_COMMANDS", (("/nonexistent/reboot",),))
    outcome = await run(real, "reboot", {"confirm": True})
    assert outcome.status == "failed" and "no reboot command found" in (outcome.error or "")
