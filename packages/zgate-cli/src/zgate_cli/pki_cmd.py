"""``zgate pki``: create the CA, issue and revoke client/connector certificates, list them."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, TextIO

from cryptography import x509

from zgate_pki import (
    IssuedCertificate,
    PkiError,
    init_pki,
    issue_certificate,
    list_certificates,
    revoke_certificate,
    validate_dns_name,
    validate_group,
    validate_ident,
    validate_ip,
    validate_trust_domain,
)

__all__ = ["DEFAULT_DIR", "register"]

#: Where the PKI lives unless ``--dir`` says otherwise.
DEFAULT_DIR: Final = Path(".zgate/pki")

# Reasons an operator is likely to give (RFC 5280 5.3.1), by their CLI spelling.
_REASONS: Final = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key-compromise": x509.ReasonFlags.key_compromise,
    "affiliation-changed": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessation-of-operation": x509.ReasonFlags.cessation_of_operation,
}

_Handler = Callable[[argparse.Namespace], int]


def _failures_to_exit_code(handler: _Handler) -> _Handler:
    """Report a PkiError as one line on stderr and exit status 2, as every zgate command
    does for a configuration error (no traceback)."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except PkiError as exc:
            print(f"zgate pki: error: {exc}", file=sys.stderr)
            return 2

    return run


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _checked(validate: Callable[[str], object]) -> Callable[[str], str]:
    """An argparse ``type`` that turns a PkiError into a usage error (exit status 2).

    The value is kept as the (normalised, for names) text the library expects.
    """

    def check(text: str) -> str:
        try:
            normalised = validate(text)
            return normalised if isinstance(normalised, str) else text
        except PkiError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return check


def _add_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_DIR,
        metavar="DIR",
        help=f"PKI directory (default: ./{DEFAULT_DIR})",
    )


def _print_table(rows: Sequence[Sequence[str]], out: TextIO, indent: str = "") -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        print(f"{indent}{cells}".rstrip(), file=out)


def _status(cert: IssuedCertificate, now: datetime) -> str:
    if cert.revoked:
        return "revoked"
    return "expired" if cert.not_after < now else "active"


@_failures_to_exit_code
def _cmd_init(args: argparse.Namespace) -> int:
    paths = init_pki(
        args.dir,
        trust_domain=args.trust_domain,
        relay_names=args.relay_names or ("localhost",),
        relay_ips=args.relay_ips or ("127.0.0.1", "::1"),
        days=args.days,
        ca_days=args.ca_days,
        force=args.force,
    )
    print(f"Created a PKI for trust domain {args.trust_domain} in {paths.directory}")
    _print_table(
        [
            ("CA certificate", str(paths.ca_cert)),
            ("CA key", f"{paths.ca_key}  (secret: keep it off the relay)"),
            ("relay certificate", str(paths.relay_cert)),
            ("relay key", str(paths.relay_key)),
            ("CRL", str(paths.crl)),
        ],
        sys.stdout,
        indent="  ",
    )
    return 0


@_failures_to_exit_code
def _cmd_issue(args: argparse.Namespace) -> int:
    issued = issue_certificate(
        args.dir, args.kind, args.ident, groups=getattr(args, "groups", None) or (), days=args.days
    )
    groups = ", ".join(issued.groups) or "none"
    print(
        f"Issued {issued.kind}/{issued.ident} (serial {issued.serial:x}, groups: {groups}, "
        f"valid until {issued.not_after:%Y-%m-%d %H:%M} UTC)"
    )
    _print_table(
        [("certificate", str(issued.cert_path)), ("key", str(issued.key_path))],
        sys.stdout,
        indent="  ",
    )
    return 0


@_failures_to_exit_code
def _cmd_revoke(args: argparse.Namespace) -> int:
    revoked = revoke_certificate(args.dir, args.ident, args.kind, _REASONS[args.reason])
    print(
        f"Revoked {revoked.kind}/{revoked.ident} (serial {revoked.serial:x}); "
        f"CRL rewritten: {args.dir / 'crl.pem'}. Relays refuse it from their next CRL reload."
    )
    return 0


@_failures_to_exit_code
def _cmd_list(args: argparse.Namespace) -> int:
    certificates = list_certificates(args.dir)
    if not certificates:
        print(f"No client or connector certificates issued yet in {args.dir}.")
        return 0
    now = datetime.now(UTC)
    rows = [("KIND", "ID", "GROUPS", "NOT AFTER", "STATUS", "SERIAL")]
    rows += [
        (
            c.kind,
            c.ident,
            ",".join(c.groups) or "-",
            f"{c.not_after:%Y-%m-%d}",
            _status(c, now),
            f"{c.serial:x}",
        )
        for c in certificates
    ]
    _print_table(rows, sys.stdout)
    return 0


def _register_init(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "init",
        help="create the CA, the relay certificate and an empty CRL",
        description="Create a CA (ECDSA P-256), the relay's server certificate and an empty "
        "CRL in DIR. Refuses to replace an existing CA unless --force.",
    )
    _add_dir(parser)
    parser.add_argument(
        "--trust-domain",
        default="zgate.local",
        type=_checked(validate_trust_domain),
        metavar="TD",
        help="SPIFFE trust domain named in every certificate (default: zgate.local)",
    )
    parser.add_argument(
        "--relay-name",
        dest="relay_names",
        action="append",
        type=_checked(validate_dns_name),
        metavar="DNS",
        help="DNS name agents use to reach the relay; repeatable (default: localhost)",
    )
    parser.add_argument(
        "--relay-ip",
        dest="relay_ips",
        action="append",
        type=_checked(validate_ip),
        metavar="IP",
        help="IP address agents use to reach the relay; repeatable (default: 127.0.0.1 and ::1)",
    )
    parser.add_argument(
        "--days",
        type=_positive_int,
        default=825,
        help="relay certificate lifetime in days (default: 825)",
    )
    parser.add_argument(
        "--ca-days", type=_positive_int, default=3650, help="CA lifetime in days (default: 3650)"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an existing PKI: a new CA, and every certificate issued so far is "
        "invalidated and removed",
    )
    parser.set_defaults(handler=_cmd_init)


def _register_issue(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    issue = commands.add_parser(
        "issue",
        help="issue a client or connector certificate",
        description="Issue a certificate signed by the CA, named "
        "spiffe://<trust-domain>/<kind>/<ID>.",
    )
    kinds = issue.add_subparsers(title="kinds", metavar="KIND", required=True)
    for kind, text in (
        ("client", "a device or user running zgate-agent"),
        ("connector", "an on-prem connector serving private networks"),
    ):
        parser = kinds.add_parser(
            kind,
            help=f"certificate for {text}",
            description=f"Issue a certificate for {text}; writes DIR/{kind}s/ID.pem and "
            "ID.key (0600).",
        )
        parser.add_argument(
            "ident",
            metavar="ID",
            type=_checked(validate_ident),
            help="1-64 letters, digits, '.', '_', '-'",
        )
        _add_dir(parser)
        if kind == "client":
            parser.add_argument(
                "--group",
                dest="groups",
                action="append",
                type=_checked(validate_group),
                metavar="G",
                help="policy group the client belongs to; repeatable",
            )
        parser.add_argument(
            "--days", type=_positive_int, default=365, help="lifetime in days (default: 365)"
        )
        parser.set_defaults(handler=_cmd_issue, kind=kind)


def _register_revoke(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "revoke",
        help="revoke a certificate and rewrite the CRL",
        description="Revoke the active certificate of ID and rewrite DIR/crl.pem. Relays "
        "reload the CRL and end the live sessions of revoked identities.",
    )
    parser.add_argument(
        "ident", metavar="ID", type=_checked(validate_ident), help="client or connector id"
    )
    _add_dir(parser)
    parser.add_argument(
        "--kind",
        choices=("client", "connector"),
        help="needed only when a client and a connector share the id",
    )
    parser.add_argument(
        "--reason", choices=tuple(_REASONS), default="unspecified", help="recorded in the CRL"
    )
    parser.set_defaults(handler=_cmd_revoke)


def _register_list(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "list",
        help="list issued certificates",
        description="List client and connector certificates: kind, id, groups, expiry, status.",
    )
    _add_dir(parser)
    parser.set_defaults(handler=_cmd_list)


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``pki`` command group to the top-level ``zgate`` parser."""
    pki = groups.add_parser(
        "pki",
        help="manage the CA and the relay, client and connector certificates",
        description="Manage zgate's PKI: a CA, the relay certificate, client and connector "
        "certificates (mTLS identities) and the CRL.",
    )
    commands = pki.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _register_init(commands)
    _register_issue(commands)
    _register_revoke(commands)
    _register_list(commands)
