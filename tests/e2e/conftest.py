"""The ``fleet`` launcher as a real process: start it, read what it prints, stop it, clean up."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

FLEET = [sys.executable, "-m", "fleet"]
# The machine's Redis, as in tests/conftest.py (whose `prefix` and `r` fixtures use it too).
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
Start = Callable[..., "FleetProcess"]
SERVICES = ("auth", "device", "telemetry", "commands", "gateway")


def as_from_a_terminal() -> None:
    """Popen ``preexec_fn``: SIGINT back to default, as for a command typed at a terminal.

    A command started in the background by a non-interactive shell (as CI runners may start
    pytest) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any Redis/Postgres location or stream prefix, plus ``extra``."""
    drop = ("REDIS_URL", "DATABASE_URL", "STREAM_PREFIX")
    env = {k: v for k, v in os.environ.items() if not k.endswith(drop)}
    env.update(extra)
    return env


def fields(line: str) -> dict[str, str]:
    """The ``key=value`` words of a printed status line."""
    return dict(word.split("=", 1) for word in line.split() if "=" in word)


def gone(pid: int, timeout: float = 10.0) -> bool:
    """Whether the process exits (or is a zombie nobody reaps) within the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


class FleetProcess:
    """A running ``fleet`` command whose stdout lines are collected as they come."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.cwd = cwd
        self.stderr_path = cwd / f"fleet-{time.monotonic_ns()}.stderr"
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [*FLEET, *args],
                cwd=cwd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                preexec_fn=as_from_a_terminal,
            )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = 90.0) -> re.Match[str]:
        """The first stdout line matching ``pattern``; fails if the process exits or time runs out."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if m := regex.search(line):
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    pytest.fail(f"no line matching {pattern!r}; {self.report()}")
                self._changed.wait(min(left, 0.5))

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30.0) -> int:
        """Send ``sig`` and return the exit code (fails if it does not exit in time)."""
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"fleet did not exit {timeout}s after signal {sig}; {self.report()}")

    def report(self) -> str:
        """Exit status, stdout and the end of stderr, for failure messages."""
        err = self.stderr_path.read_text(errors="replace")[-4000:]
        out = "\n".join(self.lines)
        return f"exit={self.proc.poll()}\n--- stdout\n{out}\n--- stderr (tail)\n{err}"

    def kill_everything(self) -> None:
        """Teardown after a failed test: the launcher, its Redis and its Postgres."""
        if self.proc.poll() is None:
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                child.kill()
            self.proc.kill()
            self.proc.wait()
        pidfile = self.cwd / ".fleet" / "pg" / "postmaster.pid"
        if pidfile.exists():
            pid = int(pidfile.read_text().split()[0])
            if psutil.pid_exists(pid):
                os.kill(pid, signal.SIGINT)  # Postgres "fast" shutdown
                gone(pid)


@pytest.fixture
def fleet() -> Iterator[Start]:
    """Start ``fleet ARGS...`` in a directory with an environment; everything is stopped afterwards."""
    started: list[FleetProcess] = []

    def start(*args: str, cwd: Path, env: dict[str, str]) -> FleetProcess:
        process = FleetProcess(list(args), cwd, env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill_everything()


@contextlib.contextmanager
def new_database(run_id: str) -> Iterator[str]:
    """A database of its own (a platform seeded by ``fleet up`` owns its auth schema: one per run)."""
    import asyncio

    import asyncpg

    from ..conftest import PG_ADMIN_URL

    name = f"fleet_test_{run_id}_{uuid.uuid4().hex[:8]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{PG_ADMIN_URL.rpartition('/')[0]}/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def own_database_url(run_id: str) -> Iterator[str]:
    """A fresh database for one test that seeds a platform with ``fleet up``."""
    with new_database(run_id) as url:
        yield url


@pytest.fixture(scope="module")
def module_database_url(run_id: str) -> Iterator[str]:
    """A fresh database shared by one module's tests (one ``fleet up`` for the module)."""
    with new_database(run_id) as url:
        yield url
