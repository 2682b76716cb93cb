"""Running a process for a command: the ``run_script`` allow-list checks and ``run_process``.

A process runs without a shell in a process group of its own, so a timeout (or the agent's
cancellation) kills whatever it started; its output is read to the end but only the start of it
is kept. Refusals are ``ScriptError`` with the message the operator sees (``agent.commands`` turns
them into failed outcomes).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCRIPT_TIMEOUT_DEFAULT_S, SCRIPT_TIMEOUT_MAX_S = 30.0, 300.0
_SCRIPT_MAX_ARGS, _SCRIPT_MAX_ARG = 64, 4_096
_KILL_GRACE_S = 2.0  # after a kill, how long the pipes may take to close
# Twice the server's output and error limits: the registry clips to them after decoding.
KEEP_STDOUT, KEEP_STDERR = 20_000, 10_000


class ScriptError(ValueError):
    """A script or its parameters refused, with the message the operator sees."""


def script_path(scripts_dir: Path, name: Any) -> Path:
    """The executable ``name`` directly inside ``scripts_dir``; raises ScriptError for anything else."""
    if not isinstance(name, str) or not name or name.startswith(".") or "\x00" in name or len(name) > 255:
        raise ScriptError("name: a file name inside the scripts directory")
    if any(sep in name for sep in ("/", "\\", os.sep, os.altsep) if sep):
        raise ScriptError("name: no path separators")
    try:
        base = scripts_dir.resolve(strict=True)
        path = (scripts_dir / name).resolve(strict=True)
    except (OSError, RuntimeError):
        raise ScriptError(f"no script named {name!r}") from None
    if path.parent != base or not path.is_file():  # a symlink may point anywhere: judge its target
        raise ScriptError(f"{name!r} is not a script of the scripts directory")
    if not os.access(path, os.X_OK):
        raise ScriptError(f"{name!r} is not executable")
    if path.stat().st_mode & 0o002:  # anyone on the device could change what it runs
        raise ScriptError(f"{name!r} is writable by everyone")
    return path


def script_args(args: Any) -> list[str]:
    """The script's arguments: at most 64 strings, each at most 4,096 characters, no NULs."""
    if args is None:
        return []
    ok = isinstance(args, list) and len(args) <= _SCRIPT_MAX_ARGS
    if not ok or not all(isinstance(a, str) and len(a) <= _SCRIPT_MAX_ARG and "\x00" not in a for a in args):
        raise ScriptError(f"args: a list of at most {_SCRIPT_MAX_ARGS} strings")
    return list(args)


def script_timeout(v: Any) -> float:
    """The timeout in seconds: default 30, at most 300."""
    if v is None:
        return SCRIPT_TIMEOUT_DEFAULT_S
    if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
        raise ScriptError("timeout_s: a positive number of seconds")
    return min(float(v), SCRIPT_TIMEOUT_MAX_S)


@dataclass(frozen=True)
class ProcessRun:
    """What a finished (or killed) process left: exit code and the start of its output."""

    exit_code: int
    timed_out: bool
    stdout: str
    stderr: str
    stdout_bytes: int
    stderr_bytes: int


class _Capture:
    """A pipe read to its end, keeping its first ``keep`` bytes (a chatty process costs no memory)."""

    def __init__(self, keep: int) -> None:
        self.keep, self.kept, self.total = keep, bytearray(), 0

    async def drain(self, stream: asyncio.StreamReader | None) -> None:
        while stream is not None and (chunk := await stream.read(65536)):
            self.total += len(chunk)
            self.kept += chunk[: max(self.keep - len(self.kept), 0)]

    def text(self) -> str:
        return self.kept.decode(errors="replace")


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # the group: children the script started die with it


async def run_process(
    argv: list[str],
    *,
    timeout_s: float,
    cwd: Path,
    keep_stdout: int = KEEP_STDOUT,
    keep_stderr: int = KEEP_STDERR,
) -> ProcessRun:
    """Run ``argv`` without a shell in its own process group; kill the group at the timeout."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=cwd, start_new_session=True,
    )  # fmt: skip
    out, err = _Capture(keep_stdout), _Capture(keep_stderr)
    reads = asyncio.gather(out.drain(proc.stdout), err.drain(proc.stderr))
    timed_out = False
    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.shield(reads)
            await proc.wait()
    except TimeoutError:
        timed_out = True
    finally:  # also on cancellation: never leave the script running
        if proc.returncode is None:
            _kill_group(proc)
        if not timed_out and not reads.done():
            reads.cancel()
    with contextlib.suppress(TimeoutError):  # a process that left the group may still hold a pipe
        await asyncio.wait_for(reads, _KILL_GRACE_S)
    code = await proc.wait()
    return ProcessRun(code, timed_out, out.text(), err.text(), out.total, err.total)
