"""``zgate ctl client``: client identities and their certificates."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .bundles import BundleFile, check_writable, write_bundle
from .client import ControlClient
from .common import SubParsers, add_command, add_list_options, list_items
from .errors import CtlError
from .output import Column, cell, print_json, when
from .paths import segment

__all__ = ["ONCE", "bundle_names", "register", "report_bundle", "save_bundle"]

ONCE = (
    "this bundle is shown only once: the control plane keeps no copy of the private key"
    " (lost: revoke it, then reissue)"
)

COLUMNS: list[Column] = [
    ("ID", lambda c: cell(c.get("id"))),
    ("GROUPS", lambda c: cell(c.get("groups"))),
    ("STATE", lambda c: _state(c)),
    ("SERIAL", lambda c: cell(c.get("serial"))),
    ("CREATED", lambda c: when(c.get("created_at"))),
    ("LAST SEEN", lambda c: when(c.get("last_seen_at"))),
    ("RELAY", lambda c: cell(c.get("last_relay"))),
]


def _state(item: dict[str, Any]) -> str:
    if item.get("revoked_at"):
        return "revoked"
    return "disabled" if item.get("disabled") else "active"


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
    for path in paths:
        print(f"wrote {path}" + (" (0600)" if path.suffix == ".key" else ""))
    print(ONCE, file=sys.stderr)


def _add(args: argparse.Namespace, client: ControlClient) -> int:
    out: Path = args.out
    check_writable(out, bundle_names(args.id))
    body: dict[str, Any] = {"id": args.id, "groups": args.groups}
    if args.days is not None:
        body["days"] = args.days
    created: dict[str, Any] = client.post("/clients", body)
    paths = save_bundle(out, args.id, created.get("bundle") or {})
    if args.json:
        print_json({"client": created["client"], "files": [str(p) for p in paths]})
        print(ONCE, file=sys.stderr)
    else:
        report_bundle("client", created["client"], created["bundle"], paths)
    return 0


def _reissue(args: argparse.Namespace, client: ControlClient) -> int:
    out: Path = args.out
    check_writable(out, bundle_names(args.id))
    body: dict[str, Any] = {"groups": args.groups or None}
    if args.days is not None:
        body["days"] = args.days
    issued: dict[str, Any] = client.post(f"/clients/{segment(args.id)}/certificate", body)
    paths = save_bundle(out, args.id, issued.get("bundle") or {})
    if args.json:
        print_json({"client": issued["client"], "files": [str(p) for p in paths]})
        print(ONCE, file=sys.stderr)
    else:
        report_bundle("client", issued["client"], issued["bundle"], paths, done="re-issued")
    return 0


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
    if args.json:
        print_json(item)
    else:
        for heading, value in COLUMNS:
            print(f"{heading.lower() + ':':11}{value(item)}")
    return 0


def _set_disabled(args: argparse.Namespace, client: ControlClient) -> int:
    item: dict[str, Any] = client.patch(f"/clients/{segment(args.id)}", {"disabled": args.disable})
    if args.json:
        print_json(item)
    else:
        done = "disabled" if args.disable else "enabled"
        follow = "; relays refuse its certificate" if args.disable else ""
        print(f"{done} client {args.id}{follow}")
    return 0


def _revoke(args: argparse.Namespace, client: ControlClient) -> int:
    item: dict[str, Any] = client.post(
        f"/clients/{segment(args.id)}/revoke", {"reason": args.reason}
    )
    if args.json:
        print_json(item)
    else:
        print(
            f"revoked client {args.id} (serial {item.get('serial')}): relays end its sessions"
            " and refuse the certificate"
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
    add.add_argument(
        "--group",
        dest="groups",
        action="append",
        default=[],
        metavar="GROUP",
        help="a group for its certificate (repeatable)",
    )
    add.add_argument("--days", type=int, metavar="N", help="certificate lifetime (server: 365)")
    add.add_argument("--out", type=Path, required=True, metavar="DIR", help="write the bundle here")

    reissue = add_command(
        commands,
        "reissue",
        _reissue,
        "issue a new certificate for a revoked client and write its bundle",
        description="Issue a new certificate for a revoked client (its groups, or new ones "
        "with --group) and write DIR/ID.pem, DIR/ID.key (0600) and DIR/ca.pem.",
    )
    reissue.add_argument("id", metavar="ID")
    reissue.add_argument(
        "--group",
        dest="groups",
        action="append",
        default=[],
        metavar="GROUP",
        help="the new certificate's groups (repeatable; default: the current ones)",
    )
    reissue.add_argument("--days", type=int, metavar="N", help="certificate lifetime (365)")
    reissue.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="write the bundle here"
    )

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
