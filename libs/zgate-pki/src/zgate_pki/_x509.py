"""Building and loading the X.509 objects of the PKI (ECDSA P-256, SHA-256)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ._errors import PkiError
from ._names import Kind

__all__ = [
    "CLOCK_SKEW",
    "RevokedEntry",
    "build_ca",
    "build_crl",
    "build_leaf",
    "build_relay",
    "ca_trust_domain",
    "certificate_pem",
    "load_ca_key",
    "load_certificate",
    "load_crl",
    "new_private_key",
    "private_key_pem",
    "spiffe_id",
]

#: Certificates start this long before "now" so that peers with a slightly slow clock accept them.
CLOCK_SKEW: Final = timedelta(minutes=5)


#: What cryptography raises when the names or extensions of a loaded certificate or CRL, which
#: it parses only when they are first read, are corrupt: not only ValueError (a name attribute
#: of the wrong ASN.1 type is a TypeError, a repeated extension a DuplicateExtension).
LAZY_PARSE_ERRORS: Final = (
    ValueError,
    TypeError,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)


def new_private_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key."""
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8 PEM (aioquic's ``load_cert_chain`` and OpenSSL both read it)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def certificate_pem(cert: x509.Certificate) -> bytes:
    """The PEM encoding of `cert`."""
    return cert.public_bytes(serialization.Encoding.PEM)


def spiffe_id(trust_domain: str, kind: str, ident: str) -> str:
    """The SPIFFE ID naming `kind`/`ident` in `trust_domain`."""
    return f"spiffe://{trust_domain}/{kind}/{ident}"


def ca_trust_domain(ca: x509.Certificate) -> str | None:
    """The trust domain a CA names in its ``spiffe://<trust-domain>`` URI SAN, if any."""
    try:
        san = ca.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, *LAZY_PARSE_ERRORS):
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.lower().startswith("spiffe://") and "/" not in uri[len("spiffe://") :]:
            return uri[len("spiffe://") :].lower()
    return None


def _ski(key: ec.EllipticCurvePrivateKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key.public_key())


def _aki(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _key_usage(*, digital_signature: bool = False, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def build_ca(
    key: ec.EllipticCurvePrivateKey, trust_domain: str, not_before: datetime, not_after: datetime
) -> x509.Certificate:
    """A self-signed CA certificate; its URI SAN ``spiffe://<trust-domain>`` names the domain."""
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
            x509.NameAttribute(NameOID.COMMON_NAME, f"zgate CA {trust_domain}"),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        # path_length=0: this CA signs leaves only, never intermediates.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(_ski(key), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )


def _leaf_builder(
    ca_cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    subject: x509.Name,
    not_before: datetime,
    not_after: datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(_ski(key), critical=False)
        .add_extension(_aki(ca_cert), critical=False)
    )


def build_relay(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    key: ec.EllipticCurvePrivateKey,
    names: Sequence[str],
    ips: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address],
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    """The relay's TLS server certificate (serverAuth, DNS and IP SANs)."""
    organization = ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    subject = x509.Name(
        [
            *organization,
            x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "zgate relay"),
        ]
    )
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans += [x509.IPAddress(ip) for ip in ips]
    if not sans:
        raise PkiError("the relay certificate needs at least one DNS name or IP address")
    return (
        _leaf_builder(ca_cert, key, subject, not_before, not_after)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def build_leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    key: ec.EllipticCurvePrivateKey,
    *,
    kind: Kind,
    ident: str,
    groups: Sequence[str],
    trust_domain: str,
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    """A client/connector certificate: CN=ident, one OU per group, SPIFFE URI SAN."""
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
            *(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, g) for g in groups),
            x509.NameAttribute(NameOID.COMMON_NAME, ident),
        ]
    )
    uri = x509.UniformResourceIdentifier(spiffe_id(trust_domain, kind, ident))
    return (
        _leaf_builder(ca_cert, key, subject, not_before, not_after)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([uri]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


@dataclass(frozen=True, slots=True)
class RevokedEntry:
    """A serial to list in the CRL, with when and (optionally) why."""

    serial: int
    revoked_at: datetime
    reason: x509.ReasonFlags | None = None


def build_crl(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    entries: Iterable[RevokedEntry],
    *,
    number: int,
    this_update: datetime,
    next_update: datetime,
) -> x509.CertificateRevocationList:
    """A CRL signed by the CA listing every entry."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(_aki(ca_cert), critical=False)
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for entry in entries:
        revoked = (
            x509.RevokedCertificateBuilder()
            .serial_number(entry.serial)
            .revocation_date(entry.revoked_at)
        )
        # RFC 5280 5.3.1: the reason code "unspecified" should be left out.
        if entry.reason is not None and entry.reason is not x509.ReasonFlags.unspecified:
            revoked = revoked.add_extension(x509.CRLReason(entry.reason), critical=False)
        builder = builder.add_revoked_certificate(revoked.build())
    return builder.sign(ca_key, hashes.SHA256())


def _short(exc: Exception) -> str:
    # cryptography appends a FAQ link and the parser's state; keep the first sentence.
    return str(exc).split(". See https://", 1)[0]


def load_certificate(data: bytes, what: str) -> x509.Certificate:
    """Parse one PEM certificate, raising PkiError that names `what`."""
    try:
        return x509.load_pem_x509_certificate(data)
    except (ValueError, x509.InvalidVersion) as exc:  # InvalidVersion is no ValueError
        raise PkiError(f"{what} is not a valid PEM certificate ({_short(exc)})") from None


def load_crl(data: bytes, what: str) -> x509.CertificateRevocationList:
    """Parse one PEM CRL, raising PkiError that names `what`."""
    try:
        return x509.load_pem_x509_crl(data)
    except (ValueError, x509.InvalidVersion) as exc:  # InvalidVersion is no ValueError
        raise PkiError(f"{what} is not a valid PEM CRL ({_short(exc)})") from None


def load_ca_key(data: bytes, what: str) -> ec.EllipticCurvePrivateKey:
    """Parse the CA's unencrypted PEM private key (must be ECDSA)."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"{what} is not an unencrypted PEM private key ({exc})") from None
    except UnsupportedAlgorithm as exc:  # e.g. an EC key on a curve OpenSSL does not know
        raise PkiError(f"{what} is a private key of an unsupported kind ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{what} is not an ECDSA key")
    return key
