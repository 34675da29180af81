"""An in-memory CA: the key and certificate as PEM bytes, no files (the control plane's CA).

The PKI directory functions (`init_pki`, `issue_certificate`, `revoke_certificate`) use it too,
so a certificate has one profile whether its CA lives in a directory or in a database.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from . import _x509
from ._errors import PkiError
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
    "BundleKind",
    "CertificateAuthority",
    "CertificateBundle",
    "positive_days",
    "utc_now",
]

BundleKind = Literal["client", "connector", "relay"]

# RFC 5280 5.2.3: a CRL number is a non-negative integer of at most 20 octets.
_MAX_CRL_NUMBER: Final = 2**159 - 1


def utc_now(now: datetime | None = None) -> datetime:
    """`now` (or the current time) in UTC to the second, as X.509 stores it.

    A naive `now` is refused: guessing its zone would shift every validity period.
    """
    if now is None:
        return datetime.now(UTC).replace(microsecond=0)
    if now.tzinfo is None or now.utcoffset() is None:
        raise PkiError(f"now must be timezone-aware, got the naive datetime {now.isoformat()}")
    return now.astimezone(UTC).replace(microsecond=0)


def positive_days(days: int, what: str) -> timedelta:
    """`days` as a timedelta, or PkiError naming `what` if it is less than one day."""
    if days < 1:
        raise PkiError(f"{what} must be at least 1 day, got {days}")
    return timedelta(days=days)


def _strings(values: Sequence[str], what: str) -> Sequence[str]:
    # A bare string is a Sequence[str] too; iterating it would issue one SAN per character.
    if isinstance(values, str):
        raise PkiError(f"{what} must be a list of strings, not the single string {values!r}")
    return values


@dataclass(frozen=True, slots=True)
class CertificateBundle:
    """A freshly issued certificate with its private key and the CA certificate, all PEM.

    ``kind`` is "client", "connector" or "relay"; a relay's ``ident`` is its first DNS name
    (else its first IP address) and its ``groups`` are empty. The key is left out of ``repr``.
    """

    kind: BundleKind
    ident: str
    serial: int
    groups: tuple[str, ...]
    not_after: datetime
    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    ca_pem: bytes


class CertificateAuthority:
    """A CA held in memory: issues client, connector and relay certificates and signs CRLs.

    Build one with `create` or `from_pem`; persist it as `cert_pem` and `key_pem`.
    Issued leaves never outlive the CA: their ``not_after`` is capped at the CA's.
    """

    __slots__ = ("_cert", "_cert_pem", "_key", "_trust_domain")

    def __init__(
        self, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey, trust_domain: str
    ) -> None:
        """Wrap an already checked CA; use `create` or `from_pem` instead."""
        self._cert = certificate
        self._key = key
        self._trust_domain = trust_domain
        self._cert_pem = _x509.certificate_pem(certificate)

    @classmethod
    def create(
        cls, trust_domain: str = "zgate.local", *, days: int = 3650, now: datetime | None = None
    ) -> CertificateAuthority:
        """A new CA (fresh ECDSA P-256 key) for `trust_domain`, valid for `days` from `now`."""
        trust_domain = validate_trust_domain(trust_domain)
        lifetime = positive_days(days, "CA lifetime")
        start = utc_now(now)
        key = _x509.new_private_key()
        cert = _x509.build_ca(key, trust_domain, start - _x509.CLOCK_SKEW, start + lifetime)
        return cls(cert, key, trust_domain)

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem: bytes) -> CertificateAuthority:
        """Load a CA saved as PEM (as `create` made it); PkiError says what is wrong."""
        cert = _x509.load_certificate(cert_pem, "the CA certificate")
        key = _x509.load_ca_key(key_pem, "the CA key")
        if cert.public_key() != key.public_key():
            raise PkiError("the CA key does not match the CA certificate")
        try:
            extensions = cert.extensions
        except _x509.LAZY_PARSE_ERRORS as exc:  # a corrupt extension shows up on first access
            raise PkiError(f"the CA certificate's extensions cannot be parsed ({exc})") from None
        constraints = next(
            (e.value for e in extensions if isinstance(e.value, x509.BasicConstraints)), None
        )
        if constraints is None or not constraints.ca:
            raise PkiError(
                "the CA certificate is not a CA certificate (no basicConstraints CA:TRUE)"
            )
        # Every leaf's authorityKeyIdentifier is copied from it.
        if not any(isinstance(e.value, x509.SubjectKeyIdentifier) for e in extensions):
            raise PkiError("the CA certificate has no subjectKeyIdentifier extension")
        trust_domain = _x509.ca_trust_domain(cert)
        if trust_domain is None:
            raise PkiError("the CA certificate names no trust domain (no spiffe://<domain> SAN)")
        return cls(cert, key, validate_trust_domain(trust_domain))

    @property
    def certificate(self) -> x509.Certificate:
        """The CA certificate."""
        return self._cert

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate as PEM (what peers trust, ``ca.pem``)."""
        return self._cert_pem

    @property
    def key_pem(self) -> bytes:
        """The CA private key as unencrypted PKCS#8 PEM: store it as a secret."""
        return _x509.private_key_pem(self._key)

    @property
    def trust_domain(self) -> str:
        """The SPIFFE trust domain the CA names and puts in every leaf's URI SAN."""
        return self._trust_domain

    def _validity(self, days: int, what: str, now: datetime | None) -> tuple[datetime, datetime]:
        """(not_before, not_after) of a leaf valid `days` from `now`, capped at the CA's end."""
        lifetime = positive_days(days, what)
        start = utc_now(now)
        ca_end = self._cert.not_valid_after_utc
        if ca_end <= start:
            raise PkiError(f"the CA expired on {ca_end.isoformat()}; create a new one")
        return start - _x509.CLOCK_SKEW, min(start + lifetime, ca_end)

    def _bundle(
        self,
        kind: BundleKind,
        ident: str,
        groups: tuple[str, ...],
        cert: x509.Certificate,
        key: ec.EllipticCurvePrivateKey,
    ) -> CertificateBundle:
        return CertificateBundle(
            kind=kind,
            ident=ident,
            serial=cert.serial_number,
            groups=groups,
            not_after=cert.not_valid_after_utc,
            cert_pem=_x509.certificate_pem(cert),
            key_pem=_x509.private_key_pem(key),
            ca_pem=self._cert_pem,
        )

    def issue(
        self,
        kind: Kind,
        ident: str,
        *,
        groups: Sequence[str] = (),
        days: int = 365,
        now: datetime | None = None,
    ) -> CertificateBundle:
        """A client/connector certificate: CN=ident, one OU per group, SPIFFE URI SAN.

        The SAN is ``spiffe://<trust-domain>/<kind>/<ident>``; duplicate groups are dropped.
        """
        kind = validate_kind(kind)
        ident = validate_ident(ident)
        unique_groups = tuple(dict.fromkeys(validate_group(g) for g in _strings(groups, "groups")))
        not_before, not_after = self._validity(days, "certificate lifetime", now)
        key = _x509.new_private_key()
        cert = _x509.build_leaf(
            self._cert,
            self._key,
            key,
            kind=kind,
            ident=ident,
            groups=unique_groups,
            trust_domain=self._trust_domain,
            not_before=not_before,
            not_after=not_after,
        )
        return self._bundle(kind, ident, unique_groups, cert, key)

    def issue_relay(
        self,
        names: Sequence[str],
        ips: Sequence[str],
        *,
        days: int = 825,
        now: datetime | None = None,
    ) -> CertificateBundle:
        """A relay's TLS server certificate (serverAuth) with DNS `names` and `ips` as SANs."""
        dns_names = [validate_dns_name(n, what="relay name") for n in _strings(names, "names")]
        addresses = [validate_ip(ip) for ip in _strings(ips, "ips")]
        not_before, not_after = self._validity(days, "relay certificate lifetime", now)
        key = _x509.new_private_key()
        cert = _x509.build_relay(
            self._cert, self._key, key, dns_names, addresses, not_before, not_after
        )
        # build_relay refused an empty SAN list, so one of the two is non-empty.
        ident = dns_names[0] if dns_names else str(addresses[0])
        return self._bundle("relay", ident, (), cert, key)

    def crl(
        self,
        revoked: Iterable[tuple[int, datetime, x509.ReasonFlags | None]],
        *,
        number: int,
        days: int = 365,
        now: datetime | None = None,
    ) -> bytes:
        """A PEM CRL listing `revoked` (serial, revoked at, reason), announced fresh for `days`.

        `number` is the CRL number; give each new CRL a larger one.
        """
        if not 0 <= number <= _MAX_CRL_NUMBER:
            raise PkiError(f"the CRL number must be between 0 and 2**159-1, got {number}")
        lifetime = positive_days(days, "CRL lifetime")
        this_update = utc_now(now)
        entries = [self._entry(serial, at, reason) for serial, at, reason in revoked]
        crl = _x509.build_crl(
            self._cert,
            self._key,
            entries,
            number=number,
            this_update=this_update,
            next_update=this_update + lifetime,
        )
        return crl.public_bytes(serialization.Encoding.PEM)

    @staticmethod
    def _entry(
        serial: int, revoked_at: datetime, reason: x509.ReasonFlags | None
    ) -> _x509.RevokedEntry:
        if serial < 1:
            raise PkiError(f"a revoked serial must be a positive integer, got {serial}")
        if revoked_at.tzinfo is None or revoked_at.utcoffset() is None:
            raise PkiError(f"the revocation time of serial {serial:x} must be timezone-aware")
        return _x509.RevokedEntry(serial, revoked_at, reason)
