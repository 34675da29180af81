"""``zgate ctl token``: API tokens (admin only)."""

from __future__ import annotations

import argparse
import sys

from .client import ControlClient
from .common import SubParsers, add_command, add_list_options, list_items, print_outcome
from .output import Column, cell, print_json, when
from .paths import segment

__all__ = ["register"]

ROLES = ("admin", "operator", "viewer", "relay")

COLUMNS: list[Column] = [
    ("ID", lambda t: cell(t.get("id"))),
    ("NAME", lambda t: cell(t.get("name"))),
    ("ROLE", lambda t: cell(t.get("role"))),
    ("RELAY", lambda t: cell(t.get("relay_id"))),
    ("CREATED", lambda t: when(t.get("created_at"))),
    ("LAST USED", lambda t: when(t.get("last_used_at"))),
    ("REVOKED", lambda t: when(t.get("revoked_at"))),
]


def _create(args: argparse.Namespace, client: ControlClient) -> int:
    body = {"name": args.name, "role": args.role, "relay_id": args.relay}
    created = client.post("/tokens", body)
    if args.json:
        print_json(created)
        return 0
    print(created["token"])
    print(
        f"created {created['role']} token {created['id']} ({created['name']}); the token above"
        " is shown only this once: store it now",
        file=sys.stderr,
    )
    return 0


def _list(args: argparse.Namespace, client: ControlClient) -> int:
    list_items(args, client, "/tokens", COLUMNS, empty="no tokens")
    return 0


def _revoke(args: argparse.Namespace, client: ControlClient) -> int:
    client.delete(f"/tokens/{segment(args.id)}")
    print_outcome(args, {"id": args.id, "revoked": True}, f"revoked token {args.id}")
    return 0


def register(groups: SubParsers) -> None:
    """Add ``token`` to ``zgate ctl``."""
    token = groups.add_parser("token", help="create, list and revoke API tokens (admin)")
    commands = token.add_subparsers(title="commands", metavar="COMMAND", required=True)

    create = add_command(commands, "create", _create, "create a token (shown only once)")
    create.add_argument("--role", required=True, choices=ROLES)
    create.add_argument("--name", required=True, metavar="NAME", help="who or what holds it")
    create.add_argument(
        "--relay", metavar="RELAY_ID", help="relay tokens: the one relay it may speak for"
    )

    listing = add_command(commands, "list", _list, "list tokens (never their secrets)")
    add_list_options(listing)

    revoke = add_command(commands, "revoke", _revoke, "revoke a token at once")
    revoke.add_argument("id", metavar="ID", help="the token's id (the hex after zgt_)")
