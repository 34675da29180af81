"""What every `zgate ctl` command shares: the connection options, running a handler with a
client (errors printed as ``zgate ctl: ...`` with the right exit status) and listing pages."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeAlias

from .client import ControlClient, Page, Params
from .config import DEFAULT_URL, TOKEN_ENV, URL_ENV, resolve_connection
from .errors import CtlError
from .output import Column, print_json, render_table

__all__ = [
    "PROGRAM",
    "Handler",
    "SubParsers",
    "add_command",
    "add_list_options",
    "connection_options",
    "fail",
    "list_items",
    "runs_with_client",
]

PROGRAM = "zgate ctl"

#: Quoted: argparse's class is generic to type checkers only.
SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Handler = Callable[[argparse.Namespace, ControlClient], int]


def connection_options(*, leaf: bool) -> argparse.ArgumentParser:
    """The options every command takes, as a parent parser.

    They are accepted after ``ctl`` and after the command alike; the command's copies default
    to SUPPRESS so that they do not overwrite a value given after ``ctl``.
    """
    default: Any = argparse.SUPPRESS if leaf else None
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument(
        "--url",
        default=default,
        metavar="URL",
        help=f"the control plane (else {URL_ENV}, the config file's url:, {DEFAULT_URL})",
    )
    group.add_argument(
        "--token",
        default=default,
        metavar="TOKEN",
        help=f"API token zgt_... (else --token-file, {TOKEN_ENV}, the config file's token:)",
    )
    group.add_argument(
        "--token-file", type=Path, default=default, metavar="FILE", help="read the token here"
    )
    group.add_argument(
        "--config",
        type=Path,
        default=default,
        metavar="FILE",
        help="config file with url: and token: (default ~/.config/zgate/ctl.yaml if present)",
    )
    parent.add_argument(
        "--json",
        action="store_true",
        default=default if leaf else False,
        help="print the API's JSON instead of a table",
    )
    return parent


_LEAF_OPTIONS = connection_options(leaf=True)


def add_command(
    commands: SubParsers, name: str, handler: Handler, help_text: str, **kwargs: Any
) -> argparse.ArgumentParser:
    """A leaf command taking the connection options and running `handler` with a client."""
    parser = commands.add_parser(
        name,
        help=help_text,
        description=kwargs.pop("description", help_text),
        parents=[_LEAF_OPTIONS],
        **kwargs,
    )
    parser.set_defaults(handler=runs_with_client(handler))
    return parser


def fail(message: str) -> int:
    """Print ``zgate ctl: <message>`` on stderr; exit status 1."""
    print(f"{PROGRAM}: {message}", file=sys.stderr)
    return 1


def runs_with_client(handler: Handler) -> Callable[[argparse.Namespace], int]:
    """`handler` run with a client of the configured control plane; a CtlError is printed
    as ``zgate ctl: <message>`` and becomes its exit status (1 refused/failed, 2 usage)."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            connection = resolve_connection(
                url=args.url, token=args.token, token_file=args.token_file, config=args.config
            )
            with ControlClient(connection) as client:
                return handler(args, client)
        except CtlError as exc:
            print(f"{PROGRAM}: {exc}", file=sys.stderr)
            return exc.exit_code

    return run


def add_list_options(parser: argparse.ArgumentParser) -> None:
    """``--limit``, ``--cursor`` and ``--all`` for a list command."""
    parser.add_argument(
        "--limit", type=int, metavar="N", help="items per page (1..500, server default 50)"
    )
    parser.add_argument("--cursor", metavar="CURSOR", help="start at this page (next_cursor)")
    parser.add_argument("--all", action="store_true", help="follow next_cursor and list everything")


def list_items(
    args: argparse.Namespace,
    client: ControlClient,
    path: str,
    columns: Sequence[Column],
    params: Params | None = None,
    *,
    empty: str = "nothing to list",
) -> Page:
    """List `path` (one page, or all with ``--all``), print it (table or ``--json``) and, when
    more exist, say how to see them on stderr. Returns what was listed."""
    query: dict[str, Any] = dict(params or {})
    if args.all:
        page = client.pages(path, query)
    else:
        query.update(limit=args.limit, cursor=args.cursor)
        page = client.page(path, query)
    if args.json:
        print_json(page.as_json())
    elif page.items:
        print(render_table(page.items, columns))
    else:
        print(empty, file=sys.stderr)
    if page.next_cursor is not None and not args.json:
        print(
            f"(more exist: --all lists everything, --cursor {page.next_cursor} the next page)",
            file=sys.stderr,
        )
    return page
