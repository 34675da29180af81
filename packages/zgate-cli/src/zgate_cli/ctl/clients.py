"""``zgate ctl client``: client identities and their certificates."""

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
    ("GROUPS", lambda c: cell(c.get("groups"))),
    ("STATE", lambda c: _state(c)),
    *IDENTITY_COLUMNS,
]


def _state(item: dict[str, Any]) -> str:
    if item.get("revoked_at"):
        return "revoked"
    return "disabled" if item.get("disabled") else "active"


def _add(args: argparse.Namespace, client: ControlClient) -> int:
    issue_bundle(args, client, "client", "/clients", {"id": args.id, "groups": args.groups})
    return 0


def _reissue(args: argparse.Namespace, client: ControlClient) -> int:
    path = f"/clients/{segment(args.id)}/certificate"
    issue_bundle(args, client, "client", path, {"groups": args.groups or None}, done="re-issued")
    return 0


def _group_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument(
        "--group", dest="groups", action="append", default=[], metavar="GROUP", help=help_text
    )


def _list(args: argparse.Namespace, client: ControlClient) -> int:
    params = {
        "group": args.group,
        "q": args.q,
        "disabled": True if args.disabled else None,
        "revoked": True if args.revoked else None,
    }
    list_items(args, client, "/clients", COLUMNS, params, empty="no clients")
    return 0


def _show(args: argparse.Namespace, client: ControlClient) -> int:
    item: dict[str, Any] = client.get(f"/clients/{segment(args.id)}")
    show_item(args, item, COLUMNS)
    return 0


def _set_disabled(args: argparse.Namespace, client: ControlClient) -> int:
    item: dict[str, Any] = client.patch(f"/clients/{segment(args.id)}", {"disabled": args.disable})
    done = "disabled" if args.disable else "enabled"
    follow = "; relays refuse its certificate" if args.disable else ""
    print_outcome(args, item, f"{done} client {args.id}{follow}")
    return 0


def _revoke(args: argparse.Namespace, client: ControlClient) -> int:
    item: dict[str, Any] = client.post(
        f"/clients/{segment(args.id)}/revoke", {"reason": args.reason}
    )
    print_outcome(
        args,
        item,
        f"revoked client {args.id} (serial {item.get('serial')}): relays end its sessions"
        " and refuse the certificate",
    )
    return 0


def register(groups: SubParsers) -> None:
    """Add ``client`` to ``zgate ctl``."""
    group = groups.add_parser(
        "client", help="add, list, disable, enable, revoke and reissue clients"
    )
    commands = group.add_subparsers(title="commands", metavar="COMMAND", required=True)

    add = add_command(
        commands,
        "add",
        _add,
        "create a client and write its certificate bundle (the key is shown only once)",
        description="Create a client and write DIR/ID.pem, DIR/ID.key (0600) and DIR/ca.pem. "
        "The private key is in the control plane's answer only; existing files are never "
        "overwritten. With --json, the client and the paths written are printed (not the key).",
    )
    add.add_argument("id", metavar="ID", help="the client's identity (letters, digits, . _ -)")
    _group_option(add, "a group for its certificate (repeatable)")
    add_bundle_options(add, "certificate lifetime (server: 365)")

    reissue = add_command(
        commands,
        "reissue",
        _reissue,
        "issue a new certificate for a revoked client and write its bundle",
        description="Issue a new certificate for a revoked client (its groups, or new ones "
        "with --group) and write DIR/ID.pem, DIR/ID.key (0600) and DIR/ca.pem.",
    )
    reissue.add_argument("id", metavar="ID")
    _group_option(reissue, "the new certificate's groups (repeatable; default: the current ones)")
    add_bundle_options(reissue, "certificate lifetime (365)")

    listing = add_command(commands, "list", _list, "list clients, oldest first")
    listing.add_argument("--group", metavar="GROUP", help="only members of this group")
    listing.add_argument("--disabled", action="store_true", help="only disabled clients")
    listing.add_argument("--revoked", action="store_true", help="only revoked clients")
    listing.add_argument("--search", dest="q", metavar="TEXT", help="only ids containing TEXT")
    add_list_options(listing)

    show = add_command(commands, "show", _show, "show one client")
    show.add_argument("id", metavar="ID")

    for name, disable, text in (
        ("disable", True, "refuse a client's certificate until enabled again (reversible)"),
        ("enable", False, "accept a disabled client's certificate again"),
    ):
        cmd = add_command(commands, name, _set_disabled, text)
        cmd.add_argument("id", metavar="ID")
        cmd.set_defaults(disable=disable)

    revoke = add_command(
        commands, "revoke", _revoke, "revoke a client's certificate for good (into the CRL)"
    )
    revoke.add_argument("id", metavar="ID")
    revoke.add_argument(
        "--reason",
        default="unspecified",
        choices=(
            "unspecified",
            "keyCompromise",
            "affiliationChanged",
            "superseded",
            "cessationOfOperation",
        ),
        help="the CRL reason (default unspecified)",
    )
