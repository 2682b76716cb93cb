"""What the commands read from the environment, and how URLs are shown without their secrets."""

from __future__ import annotations

import os
import threading
from urllib.parse import urlsplit, urlunsplit

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

# Set by the launcher's SIGINT/SIGTERM handler before it raises KeyboardInterrupt: if the interrupt
# lands where Python swallows it (a finalizer such as a client's __del__), the event loop still sees
# that a stop was asked for once it installs its own handlers.
STOP_REQUESTED = threading.Event()


class CommandError(Exception):
    """A failure the user can act on: printed as one line, no traceback, with an exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def redis_url() -> str:
    """``REDIS_URL`` or the local default."""
    return os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL


def stream_prefix(given: str | None) -> str:
    """The key prefix: ``--prefix``, else ``STREAM_PREFIX``, else none."""
    if given is not None:
        return given
    return os.environ.get("STREAM_PREFIX", "")


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (safe to print and log)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable URL>"
    if not password:
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostinfo}"))
