"""``zgate``: the operator CLI. Each command group lives in its own module and registers here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Final

from . import audit_cmd, ctl, pki_cmd, policy_cmd

__all__ = ["build_parser", "main", "run_parser"]

Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

#: One entry per command group; a new group (e.g. ``policy``) adds its module's ``register``.
COMMAND_GROUPS: Final[tuple[Registrar, ...]] = (
    pki_cmd.register,
    policy_cmd.register,
    audit_cmd.register,
    ctl.register,
)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every command group registered."""
    parser = argparse.ArgumentParser(
        prog="zgate",
        description="zgate operator CLI: manage the PKI, check and explain policies.",
    )
    groups = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for register in COMMAND_GROUPS:
        register(groups)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``zgate`` with `argv` (default: sys.argv[1:]); returns the exit status.

    0 on success, 1 when the command failed, 2 on a usage error.
    """
    return run_parser(build_parser(), argv, "zgate")


def run_parser(parser: argparse.ArgumentParser, argv: Sequence[str] | None, program: str) -> int:
    """Parse `argv` and run the chosen command's ``handler``; its exit status, 2 for a usage
    error, 130 on Ctrl-C. Shared by the command-line programs built on sub-commands."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help (0) and on usage errors (2)
        return exc.code if isinstance(exc.code, int) else 2
    # Every leaf command sets `handler`; required sub-commands make argparse enforce that.
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        print(f"{program}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
