"""The agent's command handlers, in an explicit registry from command type to handler.

A handler returns a ``CommandOutcome`` or raises: ``CommandFailed`` for a refusal it explains, any
other exception for a failure reported by its message alone (never a traceback). The registry times
every run and clips what goes back to the server's limits, so no outcome is ever refused there.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.process import SCRIPT_TIMEOUT_DEFAULT_S as SCRIPT_TIMEOUT_DEFAULT_S  # re-exported
from agent.process import SCRIPT_TIMEOUT_MAX_S as SCRIPT_TIMEOUT_MAX_S
from agent.process import ProcessRun as ProcessRun
from agent.process import (
    ScriptError,
    run_process,
    script_args,
    script_path,
    script_timeout,
)

# The server's limits are bytes of UTF-8: output 10 KiB, error 5 KiB, result 64 KiB of JSON. The
# gateway also closes a socket whose frame is over 64 KiB, and a result frame carries all three at
# once, escaped: so each is bounded as a JSON string (control characters take up to 6 bytes there),
# and the three with the frame's other fields stay near 56 KB.
MAX_OUTPUT = 10_000
MAX_ERROR = 5_000
MAX_RESULT = 40_000
MAX_ECHO = 4_096
LOG_LINES_DEFAULT, LOG_LINES_MAX = 100, 1_000
_LOG_READ_BYTES = 256 * 1024  # a tail of 1,000 lines never needs more than this of each file
REBOOT_COMMANDS: tuple[tuple[str, ...], ...] = (("systemctl", "reboot"), ("/sbin/reboot",))
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_METRIC_NAME = re.compile(r"^[A-Za-z0-9_.:/-]{1,64}$")


@dataclass(frozen=True)
class CommandContext:
    """What handlers may use of the running agent."""

    mock: bool
    state_dir: Path
    scripts_dir: Path
    request_restart: Callable[[], None]
    apply_config: Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class CommandOutcome:
    """A command's result as reported to the server."""

    status: str  # "succeeded" | "failed"
    result: dict[str, Any] | None = None
    error: str | None = None
    output: str | None = None
    duration_ms: float = 0.0


class CommandFailed(Exception):
    """A handler's refusal or failure, with the message the operator sees."""

    def __init__(self, message: str, *, output: str | None = None, result: dict[str, Any] | None = None):
        super().__init__(message)
        self.output, self.result = output, result


Handler = Callable[[dict[str, Any], CommandContext], Awaitable[CommandOutcome]]


def succeeded(result: dict[str, Any] | None = None, output: str | None = None) -> CommandOutcome:
    """A successful outcome."""
    return CommandOutcome("succeeded", result=result, output=output)


def _json_cost(ch: str) -> int:
    """Bytes of one character inside a JSON string."""
    if ch in '"\\\n\r\t\b\f':
        return 2
    return 6 if ch < " " else len(ch.encode())


def clip(text: str | None, limit: int, *, keep_end: bool = False) -> str | None:
    """``text`` cut to at most ``limit`` bytes as a JSON string (its start, or its end for logs)."""
    if text is None:
        return None
    # Postgres text cannot hold NUL; a lone surrogate cannot be encoded at all.
    text = text.replace("\x00", "").encode(errors="replace").decode()
    if len(json.dumps(text, ensure_ascii=False).encode()) - 2 <= limit:
        return text
    total = n = 0
    for ch in reversed(text) if keep_end else text:
        total += _json_cost(ch)
        if total > limit:
            break
        n += 1
    return text[len(text) - n :] if keep_end else text[:n]


def _json(value: Any) -> str:
    """``value`` as JSON text that encodes to UTF-8 (Paths and the like as strings)."""
    return json.dumps(value, default=str, ensure_ascii=False).encode(errors="replace").decode()


def json_size(value: Any) -> int:
    """Bytes of ``value`` as JSON (what the server measures)."""
    return len(_json(value).encode())


def within_limits(outcome: CommandOutcome) -> CommandOutcome:
    """``outcome`` clipped to the server's limits; a result too large becomes a note of its size."""
    result = outcome.result
    if result is not None:
        try:
            encoded = _json(result)
        except (TypeError, ValueError):  # circular, or keys JSON cannot have
            encoded = '{"unencodable": true}'
        size = len(encoded.encode())
        result = {"truncated": True, "bytes": size} if size > MAX_RESULT else json.loads(encoded)
    return replace(
        outcome, result=result, error=clip(outcome.error, MAX_ERROR), output=clip(outcome.output, MAX_OUTPUT)
    )


class CommandRegistry:
    """Command type -> handler; runs one command into an outcome that never raises."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, name: str, handler: Handler) -> None:
        """Handle commands of type ``name`` with ``handler`` (replacing any earlier one)."""
        self._handlers[name] = handler

    def names(self) -> list[str]:
        """The command types this registry handles."""
        return sorted(self._handlers)

    async def run(self, command_type: str, parameters: dict[str, Any], ctx: CommandContext) -> CommandOutcome:
        """Run a command; failures of any kind become a ``failed`` outcome, timed and clipped."""
        started = time.monotonic()
        outcome = await self._outcome(command_type, parameters, ctx)
        return within_limits(replace(outcome, duration_ms=(time.monotonic() - started) * 1000))

    async def _outcome(self, command_type: str, parameters: Any, ctx: CommandContext) -> CommandOutcome:
        handler = self._handlers.get(command_type)
        if handler is None:
            return CommandOutcome("failed", error=f"unknown command type: {command_type!r:.100}")
        try:
            return await handler(parameters if isinstance(parameters, dict) else {}, ctx)
        except CommandFailed as e:
            return CommandOutcome("failed", error=str(e), output=e.output, result=e.result)
        except Exception as e:  # a handler bug is the command's failure, not the agent's
            return CommandOutcome("failed", error=f"{type(e).__name__}: {e}")


# ---- handlers ---------------------------------------------------------------------------------------


async def ping(params: dict[str, Any], ctx: CommandContext) -> CommandOutcome:
    """Answer at once, echoing small parameters."""
    result: dict[str, Any] = {"pong": True, "at": datetime.now(UTC).isoformat()}
    size = json_size(params)
    if size <= MAX_ECHO:
        result["echo"] = params
    else:
        result["echo_omitted_bytes"] = size
    return succeeded(result)


async def restart(params: dict[str, Any], ctx: CommandContext) -> CommandOutcome:
    """Ask the runner to restart the agent (after this result is sent)."""
    ctx.request_restart()
    return succeeded({"restart": "scheduled"})


async def reboot(params: dict[str, Any], ctx: CommandContext) -> CommandOutcome:
    """Reboot the device: needs ``confirm: true``; faked in mock mode; real only when allowed."""
    if params.get("confirm") is not True:
        raise CommandFailed('reboot needs parameters {"confirm": true}')
    if ctx.mock:
        return succeeded({"rebooted": False, "mock": True})
    if os.environ.get("FLEET_AGENT_ALLOW_REBOOT", "").strip().lower() != "true":
        raise CommandFailed("reboot is not allowed on this device (set FLEET_AGENT_ALLOW_REBOOT=true)")
    problems = []
    for argv in (list(a) for a in REBOOT_COMMANDS if shutil.which(a[0])):
        run = await run_process(argv, timeout_s=30.0, cwd=Path("/"), keep_stderr=2 * MAX_ERROR)
        if run.exit_code == 0:
            return succeeded({"rebooted": True, "mock": False, "command": argv})
        problems.append(f"{' '.join(argv)} exited {run.exit_code}: {run.stderr.strip()}")  # try the next
    raise CommandFailed("; ".join(problems) or "no reboot command found (systemctl, /sbin/reboot)")


def validate_config(params: dict[str, Any]) -> dict[str, Any]:
    """The known config keys of ``params``, normalised; raises CommandFailed naming every problem."""
    config = params["config"] if set(params) == {"config"} else params  # flat, or under "config"
    if not isinstance(config, dict) or not config:
        raise CommandFailed("update_config needs at least one setting")
    problems = [f"{k}: unknown setting" for k in sorted(config, key=str) if k not in _CONFIG_RULES]
    out: dict[str, Any] = {}
    for key, check in _CONFIG_RULES.items():
        if key in config:
            value, problem = check(config[key])
            out[key] = value
            if problem:
                problems.append(f"{key}: {problem}")
    if problems:
        raise CommandFailed("; ".join(problems))
    return out


Check = Callable[[Any], tuple[Any, str | None]]


def _number(lo: float, hi: float, *, integer: bool = False) -> Check:
    """A check of a number (an integer if ``integer``) within lo..hi."""
    kinds = int if integer else int | float
    problem = f"{'an integer' if integer else 'a number'} within {lo:g}..{hi:g}"

    def check(v: Any) -> tuple[Any, str | None]:
        ok = isinstance(v, kinds) and not isinstance(v, bool) and lo <= v <= hi
        return v, None if ok else problem

    return check


def _log_level(v: Any) -> tuple[Any, str | None]:
    level = v.upper() if isinstance(v, str) else v
    return level, None if level in LOG_LEVELS else f"one of {', '.join(LOG_LEVELS)}"


def _metric_names(v: Any) -> tuple[Any, str | None]:
    """A list of metric names to send, or null for all of them."""
    ok = isinstance(v, list) and len(v) <= 64 and all(isinstance(n, str) and _METRIC_NAME.match(n) for n in v)
    if v is None:
        return None, None
    return (list(dict.fromkeys(v)) if ok else v), None if ok else "a list of at most 64 metric names, or null"


# The settings agent.config lets an update_config change at run time (RUNTIME_KEYS there); the
# runner's apply_config checks how they combine (backoff_cap_s >= backoff_base_s).
_CONFIG_RULES: dict[str, Check] = {
    "heartbeat_interval_s": _number(1, 3600),
    "log_level": _log_level,
    "metrics": _metric_names,
    "backoff_base_s": _number(0.1, 600),
    "backoff_cap_s": _number(1, 3600),
    "offline_sample_every": _number(1, 10_000, integer=True),
}


async def update_config(params: dict[str, Any], ctx: CommandContext) -> CommandOutcome:
    """Validate the settings, then have the runner apply (and keep) them."""
    return succeeded({"applied": ctx.apply_config(validate_config(params))})


def _bounded_int(v: Any, default: int, lo: int, hi: int, what: str) -> int:
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise CommandFailed(f"{what}: an integer")
    return min(max(v, lo), hi)


def tail_logs(state_dir: Path, lines: int) -> tuple[list[str], str]:
    """The last ``lines`` lines of each ``*.log`` in ``state_dir`` (and ``logs/``), tail-style."""
    files = sorted([*state_dir.glob("*.log"), *state_dir.glob("logs/*.log")], key=lambda p: p.stat().st_mtime)
    parts = []
    for path in files:
        with path.open("rb") as f:
            f.seek(max(path.stat().st_size - _LOG_READ_BYTES, 0))
            tail = f.read().decode(errors="replace").splitlines()[-lines:]
        parts.append(f"==> {path.relative_to(state_dir)} <==\n" + "\n".join(tail))
    return [str(p.relative_to(state_dir)) for p in files], "\n".join(parts)


async def collect_logs(params: dict[str, Any], ctx: CommandContext) -> CommandOutcome:
    """The tail of the agent's log files; the newest lines are kept when the output is clipped."""
    lines = _bounded_int(params.get("lines"), LOG_LINES_DEFAULT, 1, LOG_LINES_MAX, "lines")
    files, text = await asyncio.to_thread(tail_logs, ctx.state_dir, lines)
    if not files:
        raise CommandFailed(f"no log files in {ctx.state_dir}")
    return succeeded({"files": files, "lines": lines}, output=clip(text, MAX_OUTPUT, keep_end=True))


# ---- run_script (the process itself is agent.process) ---------------------------------------------


async def run_script(params: dict[str, Any], ctx: CommandContext) -> CommandOutcome:
    """Run an allow-listed script of ``ctx.scripts_dir`` (also in mock mode: the list is the guard)."""
    try:
        path = script_path(ctx.scripts_dir, params.get("name"))
        args, timeout_s = script_args(params.get("args")), script_timeout(params.get("timeout_s"))
    except ScriptError as exc:
        raise CommandFailed(str(exc)) from None
    run = await run_process(
        [str(path), *args], timeout_s=timeout_s, cwd=path.parent,
        keep_stdout=2 * MAX_OUTPUT, keep_stderr=2 * MAX_ERROR,
    )  # fmt: skip
    result = {
        "exit_code": run.exit_code, "timed_out": run.timed_out, "timeout_s": timeout_s,
        "stdout_bytes": run.stdout_bytes, "stderr_bytes": run.stderr_bytes,
        "output_truncated": run.stdout_bytes > MAX_OUTPUT,
    }  # fmt: skip
    if run.timed_out:
        raise CommandFailed(f"timed out after {timeout_s:g} s", output=run.stdout, result=result)
    if run.exit_code != 0:
        raise CommandFailed(
            f"exit code {run.exit_code}: {run.stderr}".strip(), output=run.stdout, result=result
        )
    return succeeded({**result, "stderr": clip(run.stderr, MAX_ERROR)}, output=run.stdout)


def default_registry() -> CommandRegistry:
    """The agent's built-in commands."""
    registry = CommandRegistry()
    for name, handler in (
        ("ping", ping),
        ("restart", restart),
        ("reboot", reboot),
        ("update_config", update_config),
        ("collect_logs", collect_logs),
        ("run_script", run_script),
    ):
        registry.register(name, handler)
    return registry
