"""ChainVerifier: chain, validity, CRL and identity checks, and reloading the CA/CRL files."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from zgate_pki import (
    REFUSAL_REASONS,
    CertificateRefused,
    ChainVerifier,
    PkiError,
    PkiPaths,
    identity_from_certificate,
    init_pki,
    issue_certificate,
    revoke_certificate,
)

NOW = datetime.now(UTC)


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def refusal(verifier: ChainVerifier, leaf: x509.Certificate | None, when: datetime = NOW) -> str:
    with pytest.raises(CertificateRefused) as info:
        verifier.verify(leaf, [], when)
    assert info.value.reason in REFUSAL_REASONS
    return info.value.reason


def sign_leaf(pki: PkiPaths, uri: str | None, *, client_auth: bool = True) -> x509.Certificate:
    """A certificate signed by the PKI's CA but built by hand (for odd contents)."""
    ca, ca_key = load_cert(pki.ca_cert), load_key(pki.ca_key)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "odd")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(hours=1))
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if uri is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
    if client_auth:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(ca_key, hashes.SHA256())


@pytest.fixture
def pki(tmp_path: Path) -> PkiPaths:
    paths = init_pki(tmp_path / "pki")
    issue_certificate(paths.directory, "client", "alice", groups=["eng"], days=10)
    return paths


@pytest.fixture
def alice(pki: PkiPaths) -> x509.Certificate:
    return load_cert(pki.leaf_cert("client", "alice"))


@pytest.fixture
def verifier(pki: PkiPaths) -> ChainVerifier:
    return ChainVerifier(pki.ca_cert, pki.crl)


def test_valid_certificate_yields_its_identity(
    verifier: ChainVerifier, alice: x509.Certificate
) -> None:
    identity = verifier.verify(alice, [], NOW)
    assert str(identity) == "client/alice"
    assert identity.groups == ("eng",)
    assert identity.serial == alice.serial_number
    assert identity.trust_domain == verifier.trust_domain == "zgate.local"


def test_naive_time_is_taken_as_utc(verifier: ChainVerifier, alice: x509.Certificate) -> None:
    assert verifier.verify(alice, [], NOW.replace(tzinfo=None)).ident == "alice"


def test_missing_certificate(verifier: ChainVerifier) -> None:
    assert refusal(verifier, None) == "no_certificate"


def test_certificate_of_another_ca(verifier: ChainVerifier, tmp_path: Path) -> None:
    other = init_pki(tmp_path / "other")
    stranger = issue_certificate(other.directory, "client", "alice")
    assert refusal(verifier, load_cert(stranger.cert_path)) == "unknown_ca"


def test_expired_and_not_yet_valid(verifier: ChainVerifier, alice: x509.Certificate) -> None:
    assert refusal(verifier, alice, NOW + timedelta(days=11)) == "expired"
    assert refusal(verifier, alice, NOW - timedelta(days=1)) == "expired"


def test_revoked_certificate(pki: PkiPaths, alice: x509.Certificate) -> None:
    revoke_certificate(pki.directory, "alice")
    verifier = ChainVerifier(pki.ca_cert, pki.crl)
    assert refusal(verifier, alice) == "revoked"
    assert verifier.revoked_serials() == {alice.serial_number}


def test_without_a_crl_nothing_is_revoked(pki: PkiPaths, alice: x509.Certificate) -> None:
    revoke_certificate(pki.directory, "alice")
    verifier = ChainVerifier(pki.ca_cert)
    assert verifier.verify(alice, [], NOW).ident == "alice"
    assert verifier.revoked_serials() == frozenset()


def test_server_certificate_is_not_a_client_certificate(
    pki: PkiPaths, verifier: ChainVerifier
) -> None:
    assert refusal(verifier, load_cert(pki.relay_cert)) == "bad_certificate"
    assert refusal(verifier, sign_leaf(pki, None, client_auth=False)) == "bad_certificate"


def test_the_ca_itself_is_not_a_client(pki: PkiPaths, verifier: ChainVerifier) -> None:
    assert refusal(verifier, load_cert(pki.ca_cert)) == "bad_certificate"


def test_hand_built_leaves_pass_when_well_formed(pki: PkiPaths, verifier: ChainVerifier) -> None:
    # The control for the two refusals below: the same construction with sane contents passes.
    identity = verifier.verify(sign_leaf(pki, "spiffe://zgate.local/client/odd"), [], NOW)
    assert (identity.kind, identity.ident) == ("client", "odd")
    robot = verifier.verify(sign_leaf(pki, "spiffe://zgate.local/robot/r2"), [], NOW)
    assert (robot.kind, robot.ident) == ("unknown", "r2")
    by_cn = verifier.verify(sign_leaf(pki, "https://example.com/x"), [], NOW)
    assert (by_cn.kind, by_cn.ident, by_cn.trust_domain) == ("client", "odd", None)


def test_foreign_trust_domain_is_refused(pki: PkiPaths, verifier: ChainVerifier) -> None:
    leaf = sign_leaf(pki, "spiffe://evil.example/client/alice")
    assert refusal(verifier, leaf) == "bad_certificate"


def test_identity_with_unsafe_characters_is_refused(pki: PkiPaths, verifier: ChainVerifier) -> None:
    leaf = sign_leaf(pki, "spiffe://zgate.local/client/a%0Ab")
    assert refusal(verifier, leaf) == "bad_certificate"


def test_reload_picks_up_a_new_crl(
    pki: PkiPaths, verifier: ChainVerifier, alice: x509.Certificate
) -> None:
    assert verifier.reload_if_changed() is False
    revoke_certificate(pki.directory, "alice")
    assert verifier.reload_if_changed() is True
    assert verifier.reload_if_changed() is False
    assert refusal(verifier, alice) == "revoked"


def test_crl_signed_by_another_ca_is_rejected_and_old_trust_kept(
    pki: PkiPaths, verifier: ChainVerifier, alice: x509.Certificate, tmp_path: Path
) -> None:
    other = init_pki(tmp_path / "other")
    pki.crl.write_bytes(other.crl.read_bytes())
    with pytest.raises(PkiError, match="not signed by the CA"):
        verifier.reload_if_changed()
    assert verifier.reload_if_changed() is False  # reported once, not on every handshake
    assert verifier.verify(alice, [], NOW).ident == "alice"
    with pytest.raises(PkiError, match="not signed by the CA"):
        ChainVerifier(pki.ca_cert, pki.crl)


def test_replaced_ca_is_picked_up(pki: PkiPaths, verifier: ChainVerifier, tmp_path: Path) -> None:
    other = init_pki(tmp_path / "other")
    stranger = load_cert(issue_certificate(other.directory, "client", "eve").cert_path)
    assert refusal(verifier, stranger) == "unknown_ca"
    pki.ca_cert.write_bytes(other.ca_cert.read_bytes())
    pki.crl.write_bytes(other.crl.read_bytes())
    assert verifier.reload_if_changed() is True
    assert verifier.verify(stranger, [], NOW).ident == "eve"


@pytest.mark.parametrize("broken", ["ca", "crl"])
def test_unreadable_files_are_pki_errors(pki: PkiPaths, broken: str) -> None:
    target = pki.ca_cert if broken == "ca" else pki.crl
    target.write_text("garbage")
    with pytest.raises(PkiError, match="not a valid PEM"):
        ChainVerifier(pki.ca_cert, pki.crl)
    target.unlink()
    with pytest.raises(PkiError, match="not found"):
        ChainVerifier(pki.ca_cert, pki.crl)


def corrupt_name(cert: x509.Certificate, text: bytes) -> x509.Certificate:
    """``cert`` with one byte of the name string ``text`` made invalid UTF-8 (same length,
    so the DER stays well formed and loads; cryptography parses names only when read)."""
    der = cert.public_bytes(serialization.Encoding.DER)
    assert der.count(text) >= 1
    broken = text[:2] + b"\xff" + text[3:]
    return x509.load_der_x509_certificate(der.replace(text, broken, 1))


def bit_string_name(cert: x509.Certificate, text: bytes) -> x509.Certificate:
    """``cert`` with the UTF8String ``text`` of a name retagged as a BIT STRING, which
    cryptography refuses with TypeError when the name is read."""
    der = cert.public_bytes(serialization.Encoding.DER)
    at = der.index(text)
    assert der[at - 2] == 0x0C
    return x509.load_der_x509_certificate(
        der[: at - 2] + b"\x03" + der[at - 1 : at] + b"\0" + der[at + 1 :]
    )


@pytest.mark.parametrize("corrupt", [corrupt_name, bit_string_name], ids=["utf8", "bit-string"])
def test_certificate_with_an_unparseable_issuer_is_refused(
    verifier: ChainVerifier,
    alice: x509.Certificate,
    corrupt: Callable[[x509.Certificate, bytes], x509.Certificate],
) -> None:
    # Found by fuzz/fuzz_pki.py: describing the refusal read the issuer, whose ValueError
    # (or TypeError) escaped verify(); a client sends this certificate in its handshake.
    leaf = corrupt(alice, b"zgate CA")
    with pytest.raises((ValueError, TypeError)):
        _ = leaf.issuer
    with pytest.raises(CertificateRefused) as info:
        verifier.verify(leaf, [], NOW)
    assert info.value.reason == "unknown_ca"
    assert info.value.detail == "issuer '<unparseable issuer>' is not the trusted CA"


def test_certificate_with_an_unparseable_subject_has_no_identity(alice: x509.Certificate) -> None:
    # Found by fuzz/fuzz_pki.py: identity_from_certificate let cryptography's ValueError out.
    for leaf in (corrupt_name(alice, b"\x0c\x05alice"), bit_string_name(alice, b"alice")):
        with pytest.raises(PkiError, match=r"^certificate subject cannot be parsed"):
            identity_from_certificate(leaf)


def test_certificate_with_a_bit_string_subject_is_refused(
    verifier: ChainVerifier, alice: x509.Certificate
) -> None:
    # Found by fuzz/fuzz_pki.py: with an unknown critical extension besides, cryptography's
    # verifier reads the subject to report it and raised TypeError out of verify().
    leaf = bit_string_name(alice, b"alice").public_bytes(serialization.Encoding.DER)
    basic_constraints = bytes.fromhex("0603551d130101ff")
    assert leaf.count(basic_constraints) == 1
    leaf = leaf.replace(basic_constraints, bytes.fromhex("0603551d600101ff"))  # 2.5.29.96
    assert refusal(verifier, x509.load_der_x509_certificate(leaf)) == "unknown_ca"


def crl_with_unparseable_issuer(pki: PkiPaths) -> bytes:
    """The PKI's CRL as PEM with its issuer's CA name made invalid UTF-8 (valid DER)."""
    crl = x509.load_pem_x509_crl(pki.crl.read_bytes())
    der = crl.public_bytes(serialization.Encoding.DER)
    broken = x509.load_der_x509_crl(der.replace(b"zgate CA", b"zg\xffte CA", 1))
    with pytest.raises(ValueError):
        _ = broken.issuer
    return broken.public_bytes(serialization.Encoding.PEM)


def test_crl_with_an_unparseable_issuer_is_a_pki_error(
    pki: PkiPaths, verifier: ChainVerifier, alice: x509.Certificate
) -> None:
    # Found by fuzz/fuzz_pki.py: comparing the CRL's issuer with the CA's subject raised
    # cryptography's ValueError out of set_revocations (a CRL pushed by the control plane).
    bad = crl_with_unparseable_issuer(pki)
    with pytest.raises(PkiError, match=r"^the pushed CRL \(revocations left unchanged\) cannot"):
        verifier.set_revocations(bad)
    assert verifier.verify(alice, [], NOW).ident == "alice"
    # The same CRL as the file: loading refuses it with a PkiError too.
    pki.crl.write_bytes(bad)
    with pytest.raises(PkiError, match=r"crl.pem cannot be parsed"):
        ChainVerifier(pki.ca_cert, pki.crl)


def test_certificate_with_a_repeated_extension_is_refused(
    verifier: ChainVerifier, alice: x509.Certificate
) -> None:
    # Found by fuzz/fuzz_pki.py: reading the extensions raised x509.DuplicateExtension (no
    # ValueError) out of identity_from_certificate.
    der = alice.public_bytes(serialization.Encoding.DER)
    key_usage = bytes.fromhex("0603551d0f")
    assert der.count(key_usage) == 1 and der.count(bytes.fromhex("0603551d25")) == 1
    leaf = x509.load_der_x509_certificate(der.replace(key_usage, bytes.fromhex("0603551d25")))
    with pytest.raises(x509.DuplicateExtension):
        _ = leaf.extensions
    with pytest.raises(PkiError, match=r"^certificate extensions cannot be parsed"):
        identity_from_certificate(leaf)
    assert refusal(verifier, leaf) in REFUSAL_REASONS
