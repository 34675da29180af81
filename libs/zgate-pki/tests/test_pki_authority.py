"""init_pki / issue_certificate / revoke_certificate / list_certificates on a real directory."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from zgate_pki import (
    PkiError,
    PkiPaths,
    init_pki,
    issue_certificate,
    list_certificates,
    revoke_certificate,
)


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def load_crl(path: Path) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def pki(tmp_path: Path) -> PkiPaths:
    return init_pki(tmp_path / "pki")


def test_init_writes_the_layout_with_private_keys_0600(pki: PkiPaths) -> None:
    for path in (pki.ca_cert, pki.relay_cert, pki.crl, pki.index):
        assert path.is_file()
    assert mode(pki.ca_key) == 0o600
    assert mode(pki.relay_key) == 0o600
    assert mode(pki.ca_cert) == 0o644
    assert (pki.directory / "clients").is_dir()
    assert (pki.directory / "connectors").is_dir()
    assert not list(pki.directory.glob(".*.tmp"))


def test_keys_are_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        paths = init_pki(tmp_path / "pki")
        issued = issue_certificate(paths.directory, "client", "alice")
    finally:
        os.umask(old)
    assert mode(paths.ca_key) == 0o600
    assert mode(issued.key_path) == 0o600


def test_ca_certificate_profile(pki: PkiPaths) -> None:
    ca = load_cert(pki.ca_cert)
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    public_key = ca.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert isinstance(public_key.curve, ec.SECP256R1)
    assert isinstance(ca.signature_hash_algorithm, hashes.SHA256)
    ca.verify_directly_issued_by(ca)


def test_relay_certificate_profile(tmp_path: Path) -> None:
    paths = init_pki(
        tmp_path / "pki",
        relay_names=["relay.example.com", "localhost"],
        relay_ips=["203.0.113.1", "2001:db8::1"],
    )
    ca, relay = load_cert(paths.ca_cert), load_cert(paths.relay_cert)
    relay.verify_directly_issued_by(ca)
    eku = relay.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = relay.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["relay.example.com", "localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == [
        "203.0.113.1",
        "2001:db8::1",
    ]
    aki = relay.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest


def test_init_writes_an_empty_crl_signed_by_the_ca(pki: PkiPaths) -> None:
    crl, ca = load_crl(pki.crl), load_cert(pki.ca_cert)
    assert len(crl) == 0
    public_key = ca.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert crl.is_signature_valid(public_key)
    assert crl.next_update_utc is not None
    assert crl.next_update_utc > crl.last_update_utc


def test_init_refuses_to_overwrite_a_ca(pki: PkiPaths) -> None:
    before = pki.ca_cert.read_bytes()
    with pytest.raises(PkiError, match="already exists"):
        init_pki(pki.directory)
    assert pki.ca_cert.read_bytes() == before


def test_init_force_starts_over(pki: PkiPaths) -> None:
    issued = issue_certificate(pki.directory, "client", "alice")
    before = pki.ca_cert.read_bytes()
    init_pki(pki.directory, force=True)
    assert pki.ca_cert.read_bytes() != before
    assert not issued.cert_path.exists()
    assert not issued.key_path.exists()
    assert list_certificates(pki.directory) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"trust_domain": "not a domain"}, "trust domain"),
        ({"relay_names": ["bad_name!"]}, "relay name"),
        ({"relay_ips": ["203.0.113"]}, "IP address"),
        ({"days": 0}, "at least 1 day"),
        ({"relay_names": [], "relay_ips": []}, "at least one"),
    ],
)
def test_init_validates_its_inputs(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(PkiError, match=message):
        init_pki(tmp_path / "pki", **kwargs)  # type: ignore[arg-type]


def test_issue_client_certificate(pki: PkiPaths) -> None:
    issued = issue_certificate(pki.directory, "client", "alice", groups=["eng", "ops", "eng"])
    assert issued.cert_path == pki.directory / "clients" / "alice.pem"
    assert issued.key_path == pki.directory / "clients" / "alice.key"
    assert mode(issued.key_path) == 0o600
    assert issued.groups == ("eng", "ops")

    cert = load_cert(issued.cert_path)
    cert.verify_directly_issued_by(load_cert(pki.ca_cert))
    assert cert.serial_number == issued.serial
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    units = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
    assert units == ["eng", "ops"]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://zgate.local/client/alice"
    ]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.not_valid_after_utc == issued.not_after


def test_issue_connector_certificate(pki: PkiPaths) -> None:
    issued = issue_certificate(pki.directory, "connector", "site-a")
    assert issued.cert_path == pki.directory / "connectors" / "site-a.pem"
    san = load_cert(issued.cert_path).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://zgate.local/connector/site-a"
    ]


@pytest.mark.parametrize("ident", ["", "a/b", "..", "x" * 65, "spaces here", "é"])
def test_issue_rejects_bad_ids(pki: PkiPaths, ident: str) -> None:
    with pytest.raises(PkiError, match="invalid id"):
        issue_certificate(pki.directory, "client", ident)


def test_issue_rejects_bad_groups(pki: PkiPaths) -> None:
    with pytest.raises(PkiError, match="invalid group"):
        issue_certificate(pki.directory, "client", "alice", groups=["a,b"])


def test_issue_needs_a_ca(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match="zgate pki init"):
        issue_certificate(tmp_path, "client", "alice")
    with pytest.raises(PkiError, match="zgate pki init"):
        issue_certificate(tmp_path / "missing", "client", "alice")
    assert not (tmp_path / "missing").exists()


def test_issue_refuses_a_second_active_certificate(pki: PkiPaths) -> None:
    issue_certificate(pki.directory, "client", "alice")
    with pytest.raises(PkiError, match="revoke it first"):
        issue_certificate(pki.directory, "client", "alice")
    revoke_certificate(pki.directory, "alice")
    again = issue_certificate(pki.directory, "client", "alice")
    assert not again.revoked


def test_revoke_rewrites_the_crl_with_every_revoked_serial(pki: PkiPaths) -> None:
    alice = issue_certificate(pki.directory, "client", "alice")
    bob = issue_certificate(pki.directory, "client", "bob")
    carol = issue_certificate(pki.directory, "connector", "carol")
    number_before = load_crl(pki.crl).extensions.get_extension_for_class(x509.CRLNumber)

    revoke_certificate(pki.directory, "alice", reason=x509.ReasonFlags.key_compromise)
    revoke_certificate(pki.directory, "carol", kind="connector")

    crl = load_crl(pki.crl)
    assert {entry.serial_number for entry in crl} == {alice.serial, carol.serial}
    assert crl.get_revoked_certificate_by_serial_number(bob.serial) is None
    entry = crl.get_revoked_certificate_by_serial_number(alice.serial)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is (
        x509.ReasonFlags.key_compromise
    )
    public_key = load_cert(pki.ca_cert).public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert crl.is_signature_valid(public_key)
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number > number_before.value.crl_number
    assert crl.next_update_utc is not None


def test_revoke_errors(pki: PkiPaths) -> None:
    with pytest.raises(PkiError, match="no certificate issued for nobody"):
        revoke_certificate(pki.directory, "nobody")
    issue_certificate(pki.directory, "client", "twin")
    issue_certificate(pki.directory, "connector", "twin")
    with pytest.raises(PkiError, match="--kind"):
        revoke_certificate(pki.directory, "twin")
    revoke_certificate(pki.directory, "twin", kind="client")
    with pytest.raises(PkiError, match="already revoked"):
        revoke_certificate(pki.directory, "twin", kind="client")


def test_list_reports_kind_groups_expiry_and_revocation(pki: PkiPaths) -> None:
    alice = issue_certificate(pki.directory, "client", "alice", groups=["eng"], days=30)
    issue_certificate(pki.directory, "connector", "site-a")
    revoke_certificate(pki.directory, "alice")

    listed = list_certificates(pki.directory)
    assert [(c.kind, c.ident, c.groups, c.revoked) for c in listed] == [
        ("client", "alice", ("eng",), True),
        ("connector", "site-a", (), False),
    ]
    assert listed[0].serial == alice.serial
    assert listed[0].not_after == alice.not_after


def test_list_needs_a_pki(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match="no PKI"):
        list_certificates(tmp_path)


def test_corrupt_index_is_a_clear_error(pki: PkiPaths) -> None:
    pki.index.write_text("{not json")
    with pytest.raises(PkiError, match="index"):
        issue_certificate(pki.directory, "client", "alice")
