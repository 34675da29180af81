"""CertificateAuthority: the in-memory CA (create, from_pem, issue, issue_relay, crl)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from zgate_pki import (
    CertificateAuthority,
    ChainVerifier,
    PkiError,
    identity_from_certificate,
    init_pki,
)

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("corp.example", now=NOW)


def write_ca(ca: CertificateAuthority, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_bytes(ca.cert_pem)
    return path


def test_create_makes_a_ca_naming_its_trust_domain(ca: CertificateAuthority) -> None:
    cert = ca.certificate
    assert ca.trust_domain == "corp.example"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://corp.example"]
    assert cert.not_valid_after_utc == NOW + timedelta(days=3650)
    assert x509.load_pem_x509_certificate(ca.cert_pem) == cert


def test_issue_client_verifies_against_the_ca_file(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    bundle = ca.issue("client", "alice", groups=["eng", "ops", "eng"], days=30, now=NOW)
    assert (bundle.kind, bundle.ident, bundle.groups) == ("client", "alice", ("eng", "ops"))
    assert bundle.ca_pem == ca.cert_pem
    assert bundle.not_after == NOW + timedelta(days=30)
    leaf = x509.load_pem_x509_certificate(bundle.cert_pem)
    assert leaf.serial_number == bundle.serial
    key = serialization.load_pem_private_key(bundle.key_pem, password=None)
    assert key.public_key() == leaf.public_key()
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://corp.example/client/alice"
    ]
    identity = ChainVerifier(write_ca(ca, tmp_path)).verify(leaf, [], NOW)
    assert (identity.kind, identity.ident, identity.groups) == ("client", "alice", ("eng", "ops"))
    assert identity.trust_domain == "corp.example"
    assert "key_pem" not in repr(bundle)


def test_issue_connector(ca: CertificateAuthority, tmp_path: Path) -> None:
    bundle = ca.issue("connector", "site-a", now=NOW)
    leaf = x509.load_pem_x509_certificate(bundle.cert_pem)
    identity = ChainVerifier(write_ca(ca, tmp_path)).verify(leaf, [], NOW)
    assert str(identity) == "connector/site-a"
    assert bundle.not_after == NOW + timedelta(days=365)


def test_same_profile_as_the_directory_ca(ca: CertificateAuthority, tmp_path: Path) -> None:
    paths = init_pki(tmp_path / "pki")
    relay = x509.load_pem_x509_certificate(paths.relay_cert.read_bytes())
    ours = x509.load_pem_x509_certificate(ca.issue_relay(["localhost"], ["127.0.0.1"]).cert_pem)
    assert [e.oid for e in ours.extensions] == [e.oid for e in relay.extensions]


def test_leaves_never_outlive_the_ca() -> None:
    short = CertificateAuthority.create(days=10, now=NOW)
    assert short.issue("client", "bob", days=365, now=NOW).not_after == NOW + timedelta(days=10)
    assert short.issue_relay(["r"], [], now=NOW).not_after == NOW + timedelta(days=10)
    with pytest.raises(PkiError, match="the CA expired"):
        short.issue("client", "bob", now=NOW + timedelta(days=11))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda ca: ca.issue("robot", "x"), "invalid kind"),
        (lambda ca: ca.issue("client", "a/b"), "invalid id"),
        (lambda ca: ca.issue("client", "a", groups=["a b"]), "invalid group"),
        (lambda ca: ca.issue("client", "a", groups="eng"), "list of strings"),
        (lambda ca: ca.issue("client", "a", days=0), "at least 1 day"),
        (lambda ca: ca.issue("client", "a", now=datetime(2026, 1, 1)), "timezone-aware"),
        (lambda ca: ca.issue_relay([], []), "at least one DNS name or IP"),
        (lambda ca: ca.issue_relay(["bad name"], []), "invalid relay name"),
        (lambda ca: ca.issue_relay([], ["999.1.1.1"]), "invalid IP"),
        (lambda ca: ca.crl([], number=-1), "CRL number"),
        (lambda ca: ca.crl([(0, NOW, None)], number=1), "positive integer"),
        (lambda ca: ca.crl([(5, datetime(2026, 1, 1), None)], number=1), "timezone-aware"),
    ],
)
def test_bad_input_is_refused(
    ca: CertificateAuthority, call: Callable[[CertificateAuthority], object], message: str
) -> None:
    with pytest.raises(PkiError, match=message):
        call(ca)


def test_create_refuses_bad_arguments() -> None:
    with pytest.raises(PkiError, match="invalid trust domain"):
        CertificateAuthority.create("not a domain")
    with pytest.raises(PkiError, match="CA lifetime must be at least 1 day"):
        CertificateAuthority.create(days=0)


def test_relay_certificate_has_the_sans(ca: CertificateAuthority) -> None:
    bundle = ca.issue_relay(["Relay.Example.com", "r2.example.com"], ["192.0.2.7", "::1"], now=NOW)
    assert (bundle.kind, bundle.ident, bundle.groups) == ("relay", "relay.example.com", ())
    assert bundle.not_after == NOW + timedelta(days=825)
    cert = x509.load_pem_x509_certificate(bundle.cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["relay.example.com", "r2.example.com"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("192.0.2.7"),
        ipaddress.ip_address("::1"),
    ]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    cert.verify_directly_issued_by(ca.certificate)
    assert ca.issue_relay([], ["10.0.0.1"]).ident == "10.0.0.1"


def test_from_pem_round_trip(ca: CertificateAuthority, tmp_path: Path) -> None:
    again = CertificateAuthority.from_pem(ca.cert_pem, ca.key_pem)
    assert again.certificate == ca.certificate
    assert again.trust_domain == "corp.example"
    assert again.key_pem == ca.key_pem
    # A leaf from the reloaded CA verifies against the original CA certificate.
    leaf = x509.load_pem_x509_certificate(again.issue("client", "carol").cert_pem)
    assert ChainVerifier(write_ca(ca, tmp_path)).verify(leaf, [], NOW).ident == "carol"


def test_from_pem_refuses_bad_input(ca: CertificateAuthority) -> None:
    other = CertificateAuthority.create()
    leaf = ca.issue("client", "dave")
    with pytest.raises(PkiError, match="the CA certificate is not a valid PEM certificate"):
        CertificateAuthority.from_pem(b"junk", ca.key_pem)
    with pytest.raises(PkiError, match="the CA key is not an unencrypted PEM private key"):
        CertificateAuthority.from_pem(ca.cert_pem, b"junk")
    with pytest.raises(PkiError, match="does not match"):
        CertificateAuthority.from_pem(ca.cert_pem, other.key_pem)
    with pytest.raises(PkiError, match="not a CA certificate"):
        CertificateAuthority.from_pem(leaf.cert_pem, leaf.key_pem)


def test_from_pem_refuses_a_ca_without_trust_domain() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "plain CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(PkiError, match="names no trust domain"):
        CertificateAuthority.from_pem(cert.public_bytes(serialization.Encoding.PEM), key_pem)


def test_crl_lists_the_serials_and_verifies(ca: CertificateAuthority) -> None:
    alice = ca.issue("client", "alice")
    bob = ca.issue("client", "bob")
    revoked_at = NOW - timedelta(hours=2)
    pem = ca.crl(
        [(alice.serial, revoked_at, x509.ReasonFlags.key_compromise), (bob.serial, NOW, None)],
        number=7,
        days=3,
        now=NOW,
    )
    crl = x509.load_pem_x509_crl(pem)
    assert crl.is_signature_valid(ca.certificate.public_key())  # type: ignore[arg-type]
    assert crl.issuer == ca.certificate.subject
    assert {entry.serial_number for entry in crl} == {alice.serial, bob.serial}
    entry = crl.get_revoked_certificate_by_serial_number(alice.serial)
    assert entry is not None
    assert entry.revocation_date_utc == revoked_at
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value
    assert reason.reason is x509.ReasonFlags.key_compromise
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 7
    assert crl.last_update_utc == NOW
    assert crl.next_update_utc == NOW + timedelta(days=3)
    assert identity_from_certificate(x509.load_pem_x509_certificate(bob.cert_pem)).ident == "bob"


def test_empty_crl(ca: CertificateAuthority) -> None:
    crl = x509.load_pem_x509_crl(ca.crl([], number=0))
    assert len(crl) == 0
