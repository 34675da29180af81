"""The CA the control plane holds, kept in the database (table ``authority``, one row).

Every certificate it issues is recorded in ``certificates`` (serial as lower-case hex), and the
CRL is rebuilt from every revoked row whenever it is needed, so no state lives in one process.

The CA key at rest: it is stored in the database as unencrypted PKCS#8 PEM (column
``authority.ca_key_pem``). Whoever can read the database can issue certificates, so protect the
database (and its backups) as the CA itself; there is no KMS or HSM integration here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache
from typing import Final

from cryptography import x509
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from zgate_control.models import Authority, Certificate, utc_now
from zgate_pki import CertificateAuthority, CertificateBundle, Kind

__all__ = [
    "CRL_DAYS",
    "AuthorityMissing",
    "ca_pem",
    "crl_pem",
    "ensure_authority",
    "issue_bundle",
    "issue_relay_bundle",
    "load_authority",
    "revoke",
    "serial_hex",
]

log = logging.getLogger("zgate.control.ca")

#: How long each CRL is announced fresh; a new one is signed every time it is asked for.
CRL_DAYS: Final = 30
#: The single row of ``authority``.
_AUTHORITY_ID: Final = 1


class AuthorityMissing(RuntimeError):
    """The database has no CA yet (the control plane's first start creates it)."""


def serial_hex(serial: int) -> str:
    """A serial as the database and the change log spell it: lower-case hex, no prefix."""
    return f"{serial:x}"


def ensure_authority(session: Session, trust_domain: str) -> Authority:
    """The CA row, created (fresh key, valid ten years) if the database has none.

    The caller serialises first starts (bootstrap holds the change log's row lock), so two
    replicas starting together create one CA between them.
    """
    row = session.get(Authority, _AUTHORITY_ID)
    if row is not None:
        if row.trust_domain != trust_domain:
            log.warning(
                "the CA in the database is for trust domain %s, not the configured %s; "
                "keeping the database's",
                row.trust_domain,
                trust_domain,
            )
        return row
    ca = CertificateAuthority.create(trust_domain)
    row = Authority(
        id=_AUTHORITY_ID,
        trust_domain=ca.trust_domain,
        ca_cert_pem=ca.cert_pem.decode(),
        ca_key_pem=ca.key_pem.decode(),
        crl_number=1,
        created_at=utc_now(),
    )
    session.add(row)
    session.flush()
    log.info("created the CA", extra={"trust_domain": ca.trust_domain})
    return row


@lru_cache(maxsize=4)
def _parsed(cert_pem: str, key_pem: str) -> CertificateAuthority:
    # Parsing and checking the key on every request would cost more than issuing does.
    return CertificateAuthority.from_pem(cert_pem.encode(), key_pem.encode())


def _row(session: Session) -> Authority:
    row = session.get(Authority, _AUTHORITY_ID)
    if row is None:
        raise AuthorityMissing("the database holds no CA: start zgate-control once to create it")
    return row


def load_authority(session: Session) -> CertificateAuthority:
    """The CA as a `CertificateAuthority` that can issue and sign CRLs."""
    row = _row(session)
    return _parsed(row.ca_cert_pem, row.ca_key_pem)


def ca_pem(session: Session) -> str:
    """The CA certificate (PEM), what every peer trusts."""
    return _row(session).ca_cert_pem


def _record(session: Session, bundle: CertificateBundle, ident: str) -> None:
    session.add(
        Certificate(
            serial=serial_hex(bundle.serial),
            kind=bundle.kind,
            ident=ident,
            groups=list(bundle.groups),
            issued_at=utc_now(),
            not_after=bundle.not_after,
        )
    )
    session.flush()


def issue_bundle(
    session: Session, kind: Kind, ident: str, *, groups: Sequence[str] = (), days: int = 365
) -> CertificateBundle:
    """Issue a client or connector certificate and record it in ``certificates``.

    Raises zgate_pki.PkiError for an invalid id, group or lifetime.
    """
    bundle = load_authority(session).issue(kind, ident, groups=groups, days=days)
    _record(session, bundle, ident)
    return bundle


def issue_relay_bundle(
    session: Session,
    relay_id: str,
    names: Sequence[str],
    ips: Sequence[str],
    *,
    days: int = 825,
) -> CertificateBundle:
    """Issue a relay's TLS server certificate, recorded under the relay's id."""
    bundle = load_authority(session).issue_relay(names, ips, days=days)
    _record(session, bundle, relay_id)
    return bundle


def revoke(
    session: Session, serial: str, reason: x509.ReasonFlags = x509.ReasonFlags.unspecified
) -> bool:
    """Revoke the certificate `serial` (hex); False if it was already revoked.

    Raises KeyError for a serial the CA never issued. Bumps the CRL number, so the next CRL
    built (`crl_pem`) supersedes every earlier one.
    """
    row = session.get(Certificate, serial, with_for_update=True)
    if row is None:
        raise KeyError(serial)
    if row.revoked_at is not None:
        return False
    row.revoked_at = utc_now()
    row.revoke_reason = reason.value
    session.execute(
        update(Authority)
        .where(Authority.id == _AUTHORITY_ID)
        .values(crl_number=Authority.crl_number + 1)
    )
    session.flush()
    return True


def crl_pem(session: Session) -> str:
    """A freshly signed CRL (PEM) listing every revoked certificate, numbered from the row."""
    session.flush()
    row = _row(session)
    session.refresh(row, ["crl_number"])
    revoked = session.execute(
        select(Certificate.serial, Certificate.revoked_at, Certificate.revoke_reason)
        .where(Certificate.revoked_at.is_not(None))
        .order_by(Certificate.revoked_at, Certificate.serial)
    ).all()
    entries = [
        (int(serial, 16), at, x509.ReasonFlags(reason) if reason else None)
        for serial, at, reason in revoked
        if at is not None
    ]
    ca = _parsed(row.ca_cert_pem, row.ca_key_pem)
    return ca.crl(entries, number=row.crl_number, days=CRL_DAYS).decode()
