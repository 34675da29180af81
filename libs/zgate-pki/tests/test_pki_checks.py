"""check_identity_files: each way a certificate/key/CA file can be wrong gives one clear error."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from zgate_pki import (
    PkiError,
    PkiFileError,
    PkiPaths,
    check_identity_files,
    init_pki,
    issue_certificate,
    load_certificate_file,
    load_private_key_file,
)
from zgate_pki._x509 import load_ca_key, load_certificate, load_crl


@pytest.fixture
def pki(tmp_path: Path) -> PkiPaths:
    paths = init_pki(tmp_path / "pki")
    issue_certificate(paths.directory, "client", "alice")
    return paths


def error_of(**kwargs: object) -> str:
    with pytest.raises(PkiFileError) as info:
        check_identity_files(**kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    return message


def test_good_files_load(pki: PkiPaths) -> None:
    files = check_identity_files(pki.relay_cert, pki.relay_key, ca=pki.ca_cert)
    assert files.ca is not None
    assert files.certificate.issuer == files.ca.subject


def test_missing_file_names_flag_and_path(pki: PkiPaths) -> None:
    message = error_of(cert=pki.directory / "nope.pem", key=pki.relay_key)
    assert message == f"certificate --cert {pki.directory / 'nope.pem'} does not exist"


def test_directory_instead_of_file(pki: PkiPaths) -> None:
    assert "is a directory" in error_of(cert=pki.directory, key=pki.relay_key)


def test_key_given_as_ca(pki: PkiPaths) -> None:
    message = error_of(cert=pki.relay_cert, key=pki.relay_key, ca=pki.ca_key)
    assert f"--ca {pki.ca_key} holds a private key, not a certificate" in message


def test_certificate_given_as_key(pki: PkiPaths) -> None:
    message = error_of(cert=pki.relay_cert, key=pki.relay_cert)
    assert "holds a certificate, not a private key" in message


def test_malformed_pem(pki: PkiPaths, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    assert "is not a valid PEM certificate" in error_of(cert=bad, key=pki.relay_key)
    empty = tmp_path / "empty.pem"
    empty.write_text("")
    assert "is not a PEM certificate" in error_of(cert=empty, key=pki.relay_key)
    key = tmp_path / "bad.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    assert "is not a valid PEM private key" in error_of(cert=pki.relay_cert, key=key)


def test_key_of_another_certificate(pki: PkiPaths) -> None:
    alice_key = pki.leaf_key("client", "alice")
    message = error_of(cert=pki.relay_cert, key=alice_key)
    assert f"private key --key {alice_key} does not belong to" in message


def test_certificate_from_another_ca(pki: PkiPaths, tmp_path: Path) -> None:
    other = init_pki(tmp_path / "other")
    message = error_of(cert=pki.relay_cert, key=pki.relay_key, ca=other.ca_cert)
    assert f"was not signed by the CA in --ca {other.ca_cert}" in message


def test_expired_and_not_yet_valid(pki: PkiPaths) -> None:
    later = datetime.now(UTC) + timedelta(days=4000)
    assert "expired on" in error_of(cert=pki.relay_cert, key=pki.relay_key, now=later)
    earlier = datetime.now(UTC) - timedelta(days=2)
    message = error_of(cert=pki.relay_cert, key=pki.relay_key, now=earlier)
    assert "is not valid yet" in message and "clock" in message


def test_unreadable_key_as_root_is_reported(pki: PkiPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    # Root reads any file, so the permission error is injected where the file is read.
    def deny(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", deny)
    with pytest.raises(PkiFileError, match=r"permission denied \(mode 0600, owner"):
        load_private_key_file(pki.relay_key, "private key", "--key")


def test_loaders_without_flag(pki: PkiPaths) -> None:
    with pytest.raises(PkiFileError, match=r"^CA certificate .*ca.key holds a private key"):
        load_certificate_file(pki.ca_key, "CA certificate")


def _key_on_unknown_curve() -> bytes:
    """A PEM EC key whose curve OID OpenSSL does not know (found by fuzz/fuzz_pki.py: the
    P-256 OID 1.2.840.10045.3.1.7 with its last arcs changed, same length, valid DER)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    der = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    p256 = bytes.fromhex("06082a8648ce3d030107")
    assert der.count(p256) == 1
    der = der.replace(p256, bytes.fromhex("06082a8648ce3d03fd06"))
    body = base64.encodebytes(der).decode("ascii")
    return f"-----BEGIN PRIVATE KEY-----\n{body}-----END PRIVATE KEY-----\n".encode()


def test_key_on_an_unknown_curve_is_a_clear_error(tmp_path: Path) -> None:
    # cryptography raises UnsupportedAlgorithm here, neither ValueError nor TypeError.
    path = tmp_path / "odd.key"
    path.write_bytes(_key_on_unknown_curve())
    path.chmod(0o600)
    with pytest.raises(PkiFileError, match=r"^private key .*odd.key is a private key of an unsupp"):
        load_private_key_file(path, "private key", "--key")
    with pytest.raises(PkiError, match=r"^CA key is a private key of an unsupported kind"):
        load_ca_key(path.read_bytes(), "CA key")


def _with_version(pem: bytes, field: bytes, version: int, *, crl: bool = False) -> bytes:
    """``pem`` (a certificate or CRL) with its version INTEGER ``field`` set to ``version``,
    a value cryptography refuses with x509.InvalidVersion, which is no ValueError."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    loaded = x509.load_pem_x509_crl(pem) if crl else x509.load_pem_x509_certificate(pem)
    der = loaded.public_bytes(serialization.Encoding.DER)
    at = der.index(field)
    der = der[: at + len(field) - 1] + bytes((version,)) + der[at + len(field) :]
    label = "X509 CRL" if crl else "CERTIFICATE"
    body = base64.encodebytes(der).decode("ascii")
    return f"-----BEGIN {label}-----\n{body}-----END {label}-----\n".encode()


def test_certificate_and_crl_of_unknown_versions_are_clear_errors(pki: PkiPaths) -> None:
    # Found by fuzz/fuzz_pki.py: x509.InvalidVersion escaped load_crl and load_certificate.
    cert = _with_version(pki.relay_cert.read_bytes(), bytes((0xA0, 3, 2, 1, 2)), 7)
    with pytest.raises(PkiError, match=r"^relay cert is not a valid PEM certificate \(7 is"):
        load_certificate(cert, "relay cert")
    path = pki.directory / "v8.pem"
    path.write_bytes(cert)
    with pytest.raises(PkiFileError, match=r"v8.pem is not a valid PEM certificate"):
        load_certificate_file(path, "certificate", "--cert")
    crl = _with_version(pki.crl.read_bytes(), bytes((2, 1, 1)), 40, crl=True)
    with pytest.raises(PkiError, match=r"^crl is not a valid PEM CRL \(40 is not a valid CRL"):
        load_crl(crl, "crl")
