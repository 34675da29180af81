"""``zgate-lab``: the lab's command line (``demo``, ``down``). Dev-only: the operator CLI
``zgate`` does not carry it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from . import lab_cmd

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``zgate-lab`` parser with its ``demo`` and ``down`` commands."""
    parser = argparse.ArgumentParser(
        prog="zgate-lab",
        description="Throw-away labs of network namespaces on this machine: an agent, a "
        "relay and an internet host. Needs root.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    lab_cmd.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``zgate-lab`` with `argv` (default: sys.argv[1:]); returns the exit status.

    0 on success, 1 when the command failed, 2 on a usage error.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help (0) and on usage errors (2)
        return exc.code if isinstance(exc.code, int) else 2
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("zgate-lab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
