"""What every `zgate ctl` command shares: the connection options, running a handler with a
client (errors printed as ``zgate ctl: ...`` with the right exit status), listing pages,
showing one item, and writing the certificate bundles of clients and connectors."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeAlias

from .bundles import BundleFile, check_writable, write_bundle
from .client import ControlClient, Page, Params
from .config import DEFAULT_URL, TOKEN_ENV, URL_ENV, resolve_connection
from .errors import CtlError
from .output import Column, cell, print_json, render_table, when

__all__ = [
    "IDENTITY_COLUMNS",
    "ONCE",
    "PROGRAM",
    "Handler",
    "SubParsers",
    "add_bundle_options",
    "add_command",
    "add_list_options",
    "bundle_names",
    "connection_options",
    "fail",
    "issue_bundle",
    "list_items",
    "print_outcome",
    "print_written",
    "report_bundle",
    "runs_with_client",
    "save_bundle",
    "show_item",
]

PROGRAM = "zgate ctl"

ONCE = (
    "this bundle is shown only once: the control plane keeps no copy of the private key"
    " (lost: revoke it, then reissue)"
)

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


#: The columns clients and connectors share, after their own: certificate and last contact.
IDENTITY_COLUMNS: list[Column] = [
    ("SERIAL", lambda c: cell(c.get("serial"))),
    ("CREATED", lambda c: when(c.get("created_at"))),
    ("LAST SEEN", lambda c: when(c.get("last_seen_at"))),
    ("RELAY", lambda c: cell(c.get("last_relay"))),
]

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


def show_item(
    args: argparse.Namespace, item: dict[str, Any], columns: Sequence[Column], width: int = 11
) -> None:
    """One item: the API's JSON with ``--json``, else ``heading: value`` lines, the values
    aligned at `width`."""
    if args.json:
        print_json(item)
        return
    for heading, value in columns:
        print(f"{heading.lower() + ':':{width}}{value(item)}")


def print_outcome(args: argparse.Namespace, item: Any, message: str) -> None:
    """What a change returned: the API's JSON with ``--json``, else `message`."""
    if args.json:
        print_json(item)
    else:
        print(message)


def print_written(paths: Sequence[Path]) -> None:
    """One ``wrote PATH`` line per file written (private keys marked 0600)."""
    for path in paths:
        print(f"wrote {path}" + (" (0600)" if path.suffix == ".key" else ""))


def bundle_names(ident: str) -> list[str]:
    """The files a client or connector bundle becomes: ID.pem, ID.key, ca.pem."""
    return [f"{ident}.pem", f"{ident}.key", "ca.pem"]


def save_bundle(out: Path, ident: str, bundle: dict[str, Any]) -> list[Path]:
    """Write `bundle` (cert_pem, key_pem, ca_pem) as ``out/ID.pem``, ``ID.key``, ``ca.pem``."""
    cert, key, ca = bundle_names(ident)
    try:
        files = [
            BundleFile(cert, bundle["cert_pem"]),
            BundleFile(key, bundle["key_pem"], private=True),
            BundleFile(ca, bundle["ca_pem"]),
        ]
    except (KeyError, TypeError):
        raise CtlError(f"the control plane's answer holds no bundle for {ident}") from None
    return write_bundle(out, files)


def report_bundle(
    kind: str,
    item: dict[str, Any],
    bundle: dict[str, Any],
    paths: list[Path],
    *,
    done: str = "created",
) -> None:
    """Say what was issued and written (stdout), and that the key is shown once (stderr)."""
    groups = item.get("groups")
    extra = f", groups {cell(groups)}" if groups else ""
    print(
        f"{done} {kind} {item['id']} (serial {bundle.get('serial')}{extra},"
        f" valid until {when(bundle.get('not_after'))})"
    )
    print_written(paths)
    print(ONCE, file=sys.stderr)


def issue_bundle(
    args: argparse.Namespace,
    client: ControlClient,
    kind: str,
    path: str,
    body: dict[str, Any],
    *,
    done: str = "created",
) -> dict[str, Any]:
    """POST `body` (plus ``--days``) to `path`, which answers ``{kind: ..., "bundle": ...}``,
    write the bundle of ``args.id`` into ``--out`` (checked writable first, so nothing is
    issued that cannot be saved) and report it. Returns the answer."""
    out: Path = args.out
    check_writable(out, bundle_names(args.id))
    if args.days is not None:
        body["days"] = args.days
    issued: dict[str, Any] = client.post(path, body)
    paths = save_bundle(out, args.id, issued.get("bundle") or {})
    if args.json:
        print_json({kind: issued[kind], "files": [str(p) for p in paths]})
        print(ONCE, file=sys.stderr)
    else:
        report_bundle(kind, issued[kind], issued["bundle"], paths, done=done)
    return issued


def add_bundle_options(parser: argparse.ArgumentParser, days_help: str) -> None:
    """``--days`` and ``--out DIR`` for a command that writes a certificate bundle."""
    parser.add_argument("--days", type=int, metavar="N", help=days_help)
    parser.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="write the bundle here"
    )
