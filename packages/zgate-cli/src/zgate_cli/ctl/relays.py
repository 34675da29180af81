"""``zgate ctl relay``: the relays following the control plane, and their server certificates."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path
from typing import Any

from .bundles import BundleFile, check_writable, write_bundle
from .client import ControlClient
from .common import (
    ONCE,
    SubParsers,
    add_command,
    add_list_options,
    list_items,
    print_written,
    show_item,
)
from .errors import CtlError
from .output import Column, cell, print_json, render_table, when
from .paths import segment

__all__ = ["register"]

#: What ``serve --pki DIR`` reads.
RELAY_FILES = ("relay.pem", "relay.key", "ca.pem", "crl.pem")

COLUMNS: list[Column] = [
    ("ID", lambda r: cell(r.get("id"))),
    ("ADDRESS", lambda r: cell(r.get("address"))),
    ("LAST HEARTBEAT", lambda r: when(r.get("last_heartbeat_at"))),
    ("FOLLOWING", lambda r: cell(r.get("following"))),
    ("APPLIED", lambda r: cell(r.get("applied_seq"))),
    ("BEHIND", lambda r: cell(r.get("behind"))),
    ("POLICY", lambda r: cell(r.get("policy_version"))),
    ("SESSIONS", lambda r: cell(r.get("sessions"))),
    ("SOFTWARE", lambda r: cell(r.get("software"))),
]

SESSION_COLUMNS: list[Column] = [
    ("SESSION", lambda s: cell(s.get("session"))),
    ("CLIENT", lambda s: cell(s.get("client"))),
    ("KIND", lambda s: cell(s.get("kind"))),
    ("ADDRESSES", lambda s: cell(s.get("addresses"))),
    ("MODE", lambda s: cell(s.get("mode"))),
    ("SINCE", lambda s: when(s.get("since"))),
    ("BYTES IN", lambda s: cell(s.get("bytes_in"))),
    ("BYTES OUT", lambda s: cell(s.get("bytes_out"))),
]


def _list(args: argparse.Namespace, client: ControlClient) -> int:
    list_items(args, client, "/relays", COLUMNS, empty="no relay has reported yet")
    return 0


def _sessions(args: argparse.Namespace, client: ControlClient) -> int:
    params = {"client": args.client, "relay": args.relay}
    columns: list[Column] = [("RELAY", lambda s: cell(s.get("relay"))), *SESSION_COLUMNS]
    list_items(args, client, "/sessions", columns, params, empty="no live sessions")
    return 0


def _show(args: argparse.Namespace, client: ControlClient) -> int:
    relay: dict[str, Any] = client.get(f"/relays/{segment(args.id)}")
    show_item(args, relay, COLUMNS, width=16)
    if args.json:
        return 0
    print(f"{'audit chain:':16}{cell(relay.get('audit_chain'))} (seq {relay.get('audit_seq')})")
    sessions = relay.get("live_sessions") or []
    print()
    print(render_table(sessions, SESSION_COLUMNS) if sessions else "no live sessions")
    return 0


def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address: {text!r}") from None


def _cert(args: argparse.Namespace, client: ControlClient) -> int:
    out: Path = args.out
    check_writable(out, RELAY_FILES)
    body: dict[str, Any] = {"names": args.names, "ips": args.ips}
    if args.days is not None:
        body["days"] = args.days
    issued: dict[str, Any] = client.post(f"/relays/{segment(args.id)}/certificate", body)
    authority: dict[str, Any] = client.get("/ca")
    bundle = issued.get("bundle") or {}
    try:
        files = [
            BundleFile("relay.pem", bundle["cert_pem"]),
            BundleFile("relay.key", bundle["key_pem"], private=True),
            BundleFile("ca.pem", bundle["ca_pem"]),
            BundleFile("crl.pem", authority["crl_pem"]),
        ]
    except (KeyError, TypeError):
        raise CtlError(f"the control plane's answer holds no bundle for relay {args.id}") from None
    paths = write_bundle(out, files)
    if args.json:
        print_json(
            {"relay": args.id, "serial": bundle.get("serial"), "files": list(map(str, paths))}
        )
    else:
        names = ", ".join([*args.names, *args.ips])
        print(
            f"issued relay {args.id}'s server certificate for {names} (serial"
            f" {bundle.get('serial')}, valid until {when(bundle.get('not_after'))})"
        )
        print_written(paths)
        print(
            f"start it with: serve --pki {out} --relay-name {args.id}"
            f" --control {client.connection.url} --control-token-file FILE"
            f" (a relay token: zgate ctl token create --role relay --name {args.id}"
            f" --relay {args.id})"
        )
    print(ONCE, file=sys.stderr)
    return 0


def register(groups: SubParsers) -> None:
    """Add ``relay`` to ``zgate ctl``."""
    group = groups.add_parser(
        "relay", help="list relays and live sessions, show one, issue a server certificate"
    )
    commands = group.add_subparsers(title="commands", metavar="COMMAND", required=True)

    listing = add_command(commands, "list", _list, "list relays and how far they follow")
    add_list_options(listing)

    sessions = add_command(
        commands, "sessions", _sessions, "live sessions on every relay, as last reported"
    )
    sessions.add_argument("--client", metavar="ID", help="only this client's (or connector's)")
    sessions.add_argument("--relay", metavar="ID", help="only on this relay")
    add_list_options(sessions)

    show = add_command(commands, "show", _show, "show a relay and its live sessions")
    show.add_argument("id", metavar="ID")

    cert = add_command(
        commands,
        "cert",
        _cert,
        "issue a relay's server certificate and write a PKI directory for serve --pki",
        description="Issue a relay server certificate (admin) and write DIR/relay.pem, "
        "DIR/relay.key (0600), DIR/ca.pem and DIR/crl.pem: what `serve --pki DIR` reads. "
        "Existing files are never overwritten.",
    )
    cert.add_argument("id", metavar="ID", help="the relay's id")
    cert.add_argument(
        "--name",
        dest="names",
        action="append",
        required=True,
        metavar="NAME",
        help="a DNS name agents reach it by (repeatable)",
    )
    cert.add_argument(
        "--ip",
        dest="ips",
        action="append",
        default=[],
        type=_ip,
        metavar="IP",
        help="an IP address agents reach it by (repeatable)",
    )
    cert.add_argument("--days", type=int, metavar="N", help="certificate lifetime (server: 825)")
    cert.add_argument("--out", type=Path, required=True, metavar="DIR", help="write here")
