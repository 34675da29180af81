"""``zgate-lab``: the lab's command line (``demo``, ``down``). Dev-only: the operator CLI
``zgate`` does not carry it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from zgate_cli.main import run_parser

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
    return run_parser(build_parser(), argv, "zgate-lab")


if __name__ == "__main__":
    sys.exit(main())
