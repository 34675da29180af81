"""The CA's operations on a PKI directory: init, issue, revoke, list."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from . import _x509
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


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _positive_days(days: int, what: str) -> timedelta:
    if days < 1:
        raise PkiError(f"{what} must be at least 1 day, got {days}")
    return timedelta(days=days)


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


def _load_ca(paths: PkiPaths) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    if not paths.ca_cert.exists():
        raise PkiError(f"no CA in {paths.directory} (run `zgate pki init` first)")
    cert = _x509.load_certificate(read_file(paths.ca_cert, "CA certificate"), str(paths.ca_cert))
    key = _x509.load_ca_key(read_file(paths.ca_key, "CA key"), str(paths.ca_key))
    if cert.public_key() != key.public_key():
        raise PkiError(f"{paths.ca_key} does not match {paths.ca_cert}")
    return cert, key


def _load_index(paths: PkiPaths) -> PkiIndex:
    return parse_index(read_file(paths.index, "PKI index"))


def _write_crl(
    paths: PkiPaths, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, index: PkiIndex
) -> None:
    now = _now()
    entries = [
        _x509.RevokedEntry(r.serial, r.revoked_at, x509.ReasonFlags(r.reason) if r.reason else None)
        for r in index.records
        if r.revoked_at is not None
    ]
    crl = _x509.build_crl(
        ca_cert,
        ca_key,
        entries,
        number=index.crl_number,
        this_update=now,
        next_update=now + timedelta(days=CRL_DAYS),
    )
    write_public(paths.crl, crl.public_bytes(serialization.Encoding.PEM))


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
    relay_lifetime = _positive_days(days, "relay certificate lifetime")
    ca_lifetime = _positive_days(ca_days, "CA lifetime")
    paths = PkiPaths(directory)
    ensure_private_dir(directory)
    with pki_lock(directory):
        replacing = paths.ca_cert.exists() or paths.ca_key.exists()
        if replacing and not force:
            raise PkiError(
                f"a CA already exists in {directory}; refusing to overwrite it "
                "(use --force to start over and invalidate every issued certificate)"
            )
        now = _now()
        start = now - _x509.CLOCK_SKEW
        ca_key = _x509.new_private_key()
        ca_cert = _x509.build_ca(ca_key, trust_domain, start, now + ca_lifetime)
        relay_key = _x509.new_private_key()
        relay_not_after = now + min(relay_lifetime, ca_lifetime)
        relay_cert = _x509.build_relay(
            ca_cert, ca_key, relay_key, names, ips, start, relay_not_after
        )
        index = PkiIndex(trust_domain=trust_domain, crl_number=1)
        if replacing:
            _remove_leaves(paths)
        for kind in ("client", "connector"):
            ensure_private_dir(paths.kind_dir(kind))
        write_private(paths.ca_key, _x509.private_key_pem(ca_key))
        write_public(paths.ca_cert, _x509.certificate_pem(ca_cert))
        write_private(paths.relay_key, _x509.private_key_pem(relay_key))
        write_public(paths.relay_cert, _x509.certificate_pem(relay_cert))
        write_public(paths.index, dump_index(index))
        _write_crl(paths, ca_cert, ca_key, index)
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
    lifetime = _positive_days(days, "certificate lifetime")
    paths = PkiPaths(directory)
    with pki_lock(directory):
        ca_cert, ca_key = _load_ca(paths)
        index = _load_index(paths)
        for record in index.records:
            if (record.kind, record.ident) == (kind, ident) and not record.revoked:
                raise PkiError(
                    f"{kind}/{ident} already has an active certificate "
                    f"(serial {record.serial:x}); revoke it first"
                )
        now = _now()
        not_after = min(now + lifetime, ca_cert.not_valid_after_utc)
        key = _x509.new_private_key()
        cert = _x509.build_leaf(
            ca_cert,
            ca_key,
            key,
            kind=kind,
            ident=ident,
            groups=unique_groups,
            trust_domain=index.trust_domain,
            not_before=now - _x509.CLOCK_SKEW,
            not_after=not_after,
        )
        record = IndexRecord(kind, ident, cert.serial_number, unique_groups, not_after)
        ensure_private_dir(paths.kind_dir(kind))
        write_private(paths.leaf_key(kind, ident), _x509.private_key_pem(key))
        write_public(paths.leaf_cert(kind, ident), _x509.certificate_pem(cert))
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
        ca_cert, ca_key = _load_ca(paths)
        index = _load_index(paths)
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
            updated = updated.with_revoked(record.serial, _now(), reason.value)
        # The CRL goes first: if writing the index failed, the serial would still be refused.
        _write_crl(paths, ca_cert, ca_key, updated)
        write_public(paths.index, dump_index(updated))
    revoked = next(r for r in updated.records if r.serial == active[-1].serial)
    return _issued(paths, revoked)


def list_certificates(directory: Path) -> list[IssuedCertificate]:
    """Every client/connector certificate in the index, oldest first."""
    paths = PkiPaths(directory)
    if not paths.index.exists():
        raise PkiError(f"no PKI in {directory} (run `zgate pki init` first)")
    return [_issued(paths, r) for r in _load_index(paths).records]
