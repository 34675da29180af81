"""``zgate ctl connector``: site connectors, their certificates and the prefixes they serve."""

from __future__ import annotations

import argparse
from typing import Any

from .client import ControlClient
from .common import (
    IDENTITY_COLUMNS,
    SubParsers,
    add_bundle_options,
    add_command,
    add_list_options,
    issue_bundle,
    list_items,
    print_outcome,
    show_item,
)
from .output import Column, cell
from .paths import segment

__all__ = ["register"]

COLUMNS: list[Column] = [
    ("ID", lambda c: cell(c.get("id"))),
    ("PREFIXES", lambda c: cell(c.get("prefixes"))),
    ("STATE", lambda c: "revoked" if c.get("revoked_at") else "active"),
    *IDENTITY_COLUMNS,
]


def _add(args: argparse.Namespace, client: ControlClient) -> int:
    body = {"id": args.id, "prefixes": args.prefixes}
    created = issue_bundle(args, client, "connector", "/connectors", body)
    if not args.json:
        print(f"prefixes: {cell(created['connector'].get('prefixes'))}")
    return 0


def _list(args: argparse.Namespace, client: ControlClient) -> int:
    params = {"revoked": True if args.revoked else None}
    list_items(args, client, "/connectors", COLUMNS, params, empty="no connectors")
    return 0


def _show(args: argparse.Namespace, client: ControlClient) -> int:
    item: dict[str, Any] = client.get(f"/connectors/{segment(args.id)}")
    show_item(args, item, COLUMNS)
    return 0


def _set_prefixes(args: argparse.Namespace, client: ControlClient) -> int:
    item: dict[str, Any] = client.patch(
        f"/connectors/{segment(args.id)}", {"prefixes": args.prefixes}
    )
    message = f"connector {args.id} now serves {cell(item.get('prefixes'))}; relays follow"
    print_outcome(args, item, message)
    return 0


def _revoke(args: argparse.Namespace, client: ControlClient) -> int:
    item: dict[str, Any] = client.post(f"/connectors/{segment(args.id)}/revoke", {})
    print_outcome(args, item, f"revoked connector {args.id} (serial {item.get('serial')})")
    return 0


def _prefix_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prefix",
        dest="prefixes",
        action="append",
        required=True,
        metavar="CIDR",
        help="a prefix the connector's site serves, e.g. 10.20.0.0/24 (repeatable)",
    )


def register(groups: SubParsers) -> None:
    """Add ``connector`` to ``zgate ctl``."""
    group = groups.add_parser("connector", help="add, list, re-route and revoke connectors")
    commands = group.add_subparsers(title="commands", metavar="COMMAND", required=True)

    add = add_command(
        commands,
        "add",
        _add,
        "create a connector and write its certificate bundle (the key is shown only once)",
        description="Create a connector for the prefixes its site serves and write "
        "DIR/ID.pem, DIR/ID.key (0600) and DIR/ca.pem; existing files are never overwritten.",
    )
    add.add_argument("id", metavar="ID")
    _prefix_option(add)
    add_bundle_options(add, "certificate lifetime (server: 365)")

    listing = add_command(commands, "list", _list, "list connectors, oldest first")
    listing.add_argument("--revoked", action="store_true", help="only revoked connectors")
    add_list_options(listing)

    show = add_command(commands, "show", _show, "show one connector")
    show.add_argument("id", metavar="ID")

    prefixes = add_command(
        commands, "set-prefixes", _set_prefixes, "replace the prefixes a connector serves"
    )
    prefixes.add_argument("id", metavar="ID")
    _prefix_option(prefixes)

    revoke = add_command(commands, "revoke", _revoke, "revoke a connector's certificate")
    revoke.add_argument("id", metavar="ID")
