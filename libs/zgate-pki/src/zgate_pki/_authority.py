"""The CA's operations on a PKI directory: init, issue, revoke, list."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

from cryptography import x509

from . import _x509
from ._ca import CertificateAuthority, positive_days, utc_now
from ._errors import PkiError
from ._files import ensure_private_dir, pki_lock, read_file, write_private, write_public
from ._index import IndexRecord, PkiIndex, dump_index, parse_index
from ._layout import PkiPaths
from ._names import (
    Kind,
    validate_dns_name,
    validate_group,
    validate_ident,
    validate_ip,
    validate_kind,
    validate_trust_domain,
)

__all__ = [
    "CRL_DAYS",
    "IssuedCertificate",
    "init_pki",
    "issue_certificate",
    "list_certificates",
    "revoke_certificate",
]

#: How long a CRL is announced as fresh (``next_update``); every revoke writes a new one.
CRL_DAYS: Final = 365


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A client or connector certificate recorded in the index."""

    kind: Kind
    ident: str
    serial: int
    groups: tuple[str, ...]
    not_after: datetime
    revoked: bool
    cert_path: Path
    key_path: Path


def _issued(paths: PkiPaths, record: IndexRecord) -> IssuedCertificate:
    return IssuedCertificate(
        kind=record.kind,
        ident=record.ident,
        serial=record.serial,
        groups=record.groups,
        not_after=record.not_after,
        revoked=record.revoked,
        cert_path=paths.leaf_cert(record.kind, record.ident),
        key_path=paths.leaf_key(record.kind, record.ident),
    )


def _load_ca(paths: PkiPaths) -> tuple[CertificateAuthority, PkiIndex]:
    """The directory's CA and index (read in that order, so a missing CA is reported first)."""
    if not paths.ca_cert.exists():
        raise PkiError(f"no CA in {paths.directory} (run `zgate pki init` first)")
    cert = _x509.load_certificate(read_file(paths.ca_cert, "CA certificate"), str(paths.ca_cert))
    key = _x509.load_ca_key(read_file(paths.ca_key, "CA key"), str(paths.ca_key))
    if cert.public_key() != key.public_key():
        raise PkiError(f"{paths.ca_key} does not match {paths.ca_cert}")
    index = _load_index(paths)
    # The index, not the CA's SAN, names the trust domain put in leaves.
    return CertificateAuthority(cert, key, index.trust_domain), index


def _load_index(paths: PkiPaths) -> PkiIndex:
    return parse_index(read_file(paths.index, "PKI index"))


def _write_crl(paths: PkiPaths, ca: CertificateAuthority, index: PkiIndex) -> None:
    entries = [
        (r.serial, r.revoked_at, x509.ReasonFlags(r.reason) if r.reason else None)
        for r in index.records
        if r.revoked_at is not None
    ]
    write_public(paths.crl, ca.crl(entries, number=index.crl_number, days=CRL_DAYS))


def _remove_leaves(paths: PkiPaths) -> None:
    for kind in ("client", "connector"):
        directory = paths.kind_dir(kind)
        if directory.is_dir():
            for leaf in [*directory.glob("*.pem"), *directory.glob("*.key")]:
                leaf.unlink(missing_ok=True)


def init_pki(
    directory: Path,
    *,
    trust_domain: str = "zgate.local",
    relay_names: Sequence[str] = ("localhost",),
    relay_ips: Sequence[str] = ("127.0.0.1", "::1"),
    days: int = 825,
    ca_days: int = 3650,
    force: bool = False,
) -> PkiPaths:
    """Create a CA, the relay certificate (valid `days`), an empty CRL and a fresh index.

    Refuses to replace an existing CA unless `force`; with `force` the old certificates,
    which the new CA no longer vouches for, are removed from ``clients/`` and ``connectors/``.
    """
    trust_domain = validate_trust_domain(trust_domain)
    names = [validate_dns_name(n, what="relay name") for n in relay_names]
    ips = [validate_ip(ip) for ip in relay_ips]
    positive_days(days, "relay certificate lifetime")
    positive_days(ca_days, "CA lifetime")
    paths = PkiPaths(directory)
    ensure_private_dir(directory)
    with pki_lock(directory):
        replacing = paths.ca_cert.exists() or paths.ca_key.exists()
        if replacing and not force:
            raise PkiError(
                f"a CA already exists in {directory}; refusing to overwrite it "
                "(use --force to start over and invalidate every issued certificate)"
            )
        now = utc_now()
        ca = CertificateAuthority.create(trust_domain, days=ca_days, now=now)
        relay = ca.issue_relay(names, [str(ip) for ip in ips], days=days, now=now)
        index = PkiIndex(trust_domain=trust_domain, crl_number=1)
        if replacing:
            _remove_leaves(paths)
        for kind in ("client", "connector"):
            ensure_private_dir(paths.kind_dir(kind))
        write_private(paths.ca_key, ca.key_pem)
        write_public(paths.ca_cert, ca.cert_pem)
        write_private(paths.relay_key, relay.key_pem)
        write_public(paths.relay_cert, relay.cert_pem)
        write_public(paths.index, dump_index(index))
        _write_crl(paths, ca, index)
    return paths


def issue_certificate(
    directory: Path,
    kind: Kind,
    ident: str,
    *,
    groups: Sequence[str] = (),
    days: int = 365,
) -> IssuedCertificate:
    """Issue a client/connector certificate for `ident`, recorded with its groups.

    Refuses if `ident` already holds an unrevoked certificate of that kind (revoke it first).
    """
    kind = validate_kind(kind)
    ident = validate_ident(ident)
    unique_groups = tuple(dict.fromkeys(validate_group(g) for g in groups))
    positive_days(days, "certificate lifetime")
    paths = PkiPaths(directory)
    with pki_lock(directory):
        ca, index = _load_ca(paths)
        for record in index.records:
            if (record.kind, record.ident) == (kind, ident) and not record.revoked:
                raise PkiError(
                    f"{kind}/{ident} already has an active certificate "
                    f"(serial {record.serial:x}); revoke it first"
                )
        bundle = ca.issue(kind, ident, groups=unique_groups, days=days)
        record = IndexRecord(kind, ident, bundle.serial, bundle.groups, bundle.not_after)
        ensure_private_dir(paths.kind_dir(kind))
        write_private(paths.leaf_key(kind, ident), bundle.key_pem)
        write_public(paths.leaf_cert(kind, ident), bundle.cert_pem)
        write_public(paths.index, dump_index(index.with_record(record)))
    return _issued(paths, record)


def revoke_certificate(
    directory: Path,
    ident: str,
    kind: Kind | None = None,
    reason: x509.ReasonFlags = x509.ReasonFlags.unspecified,
) -> IssuedCertificate:
    """Revoke the active certificate of `ident` and rewrite ``crl.pem`` with every revoked serial.

    `kind` is needed only when a client and a connector share the id.
    """
    ident = validate_ident(ident)
    if kind is not None:
        kind = validate_kind(kind)
    paths = PkiPaths(directory)
    with pki_lock(directory):
        ca, index = _load_ca(paths)
        matches = [r for r in index.records if r.ident == ident and kind in (None, r.kind)]
        active = [r for r in matches if not r.revoked]
        label = f"{kind}/{ident}" if kind else ident
        if not matches:
            raise PkiError(f"no certificate issued for {label}")
        if not active:
            raise PkiError(f"{label} is already revoked")
        if len({r.kind for r in active}) > 1:
            raise PkiError(f"{ident} is both a client and a connector; say which with --kind")
        updated = index
        for record in active:
            updated = updated.with_revoked(record.serial, utc_now(), reason.value)
        # The CRL goes first: if writing the index failed, the serial would still be refused.
        _write_crl(paths, ca, updated)
        write_public(paths.index, dump_index(updated))
    revoked = next(r for r in updated.records if r.serial == active[-1].serial)
    return _issued(paths, revoked)


def list_certificates(directory: Path) -> list[IssuedCertificate]:
    """Every client/connector certificate in the index, oldest first."""
    paths = PkiPaths(directory)
    if not paths.index.exists():
        raise PkiError(f"no PKI in {directory} (run `zgate pki init` first)")
    return [_issued(paths, r) for r in _load_index(paths).records]
