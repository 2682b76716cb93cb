"""The ``fleet`` console script: ``up``, ``replay``, ``rebuild``, ``streams``, ``discover``, ``simulate``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from redis.exceptions import RedisError

from . import discover, rebuild, replay, simulate, streams, up
from .config import CommandError

COMMANDS = (up, replay, rebuild, streams, discover, simulate)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="fleet", description="Run and inspect the fleet platform.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; user-facing failures are one line on stderr and a non-zero exit code."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except CommandError as exc:
        print(f"fleet {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except RedisError as exc:
        print(f"fleet {args.command}: Redis error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        _silence_stdout()
        return 0
    except KeyboardInterrupt:
        return 130
    return code


def _silence_stdout() -> None:
    """The reader went away (``| head``): point stdout at /dev/null so the exit flush cannot fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
