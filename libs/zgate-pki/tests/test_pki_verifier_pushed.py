"""ChainVerifier.set_revocations: a CRL and blocked serials pushed by the control plane."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from zgate_pki import (
    CertificateAuthority,
    CertificateBundle,
    CertificateRefused,
    ChainVerifier,
    PkiError,
)

NOW = datetime.now(UTC).replace(microsecond=0)


def replace_file(path: Path, data: bytes) -> None:
    """Write like an operator's tool would: a new file renamed over the old one."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def leaf(bundle: CertificateBundle) -> x509.Certificate:
    return x509.load_pem_x509_certificate(bundle.cert_pem)


def refused(verifier: ChainVerifier, bundle: CertificateBundle) -> CertificateRefused:
    with pytest.raises(CertificateRefused) as info:
        verifier.verify(leaf(bundle), [], NOW)
    return info.value


def accepted(verifier: ChainVerifier, bundle: CertificateBundle) -> bool:
    return verifier.verify(leaf(bundle), [], NOW).ident == bundle.ident


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("corp.example", now=NOW)


@pytest.fixture(scope="module")
def people(ca: CertificateAuthority) -> dict[str, CertificateBundle]:
    return {name: ca.issue("client", name, now=NOW) for name in ("alice", "bob", "carol")}


@pytest.fixture
def files(ca: CertificateAuthority, tmp_path: Path) -> tuple[Path, Path]:
    """ca.pem and an empty crl.pem, as a relay started from files has them."""
    ca_path, crl_path = tmp_path / "ca.pem", tmp_path / "crl.pem"
    ca_path.write_bytes(ca.cert_pem)
    crl_path.write_bytes(ca.crl([], number=1))
    return ca_path, crl_path


@pytest.fixture
def verifier(files: tuple[Path, Path]) -> ChainVerifier:
    return ChainVerifier(*files)


def test_revoked_and_blocked_serials_are_refused(
    ca: CertificateAuthority, people: dict[str, CertificateBundle], verifier: ChainVerifier
) -> None:
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    assert accepted(verifier, alice)
    crl = ca.crl([(alice.serial, NOW, x509.ReasonFlags.key_compromise)], number=2)
    verifier.set_revocations(crl, blocked=[bob.serial])

    revoked = refused(verifier, alice)
    assert revoked.reason == "revoked"
    assert "disabled" not in revoked.detail
    blocked = refused(verifier, bob)
    assert blocked.reason == "revoked"
    assert f"serial {bob.serial:x} is disabled by the control plane" in blocked.detail
    assert accepted(verifier, carol)
    assert verifier.revoked_serials() == {alice.serial, bob.serial}

    # The next push replaces the previous one: bob is enabled again.
    verifier.set_revocations(crl)
    assert accepted(verifier, bob)
    assert verifier.revoked_serials() == {alice.serial}


def test_no_crl_means_only_the_blocked_serials(
    people: dict[str, CertificateBundle], verifier: ChainVerifier
) -> None:
    verifier.set_revocations(None, {people["carol"].serial})
    assert verifier.revoked_serials() == {people["carol"].serial}
    assert refused(verifier, people["carol"]).reason == "revoked"
    assert accepted(verifier, people["alice"])


def test_pushed_crl_replaces_the_crl_file(
    ca: CertificateAuthority,
    people: dict[str, CertificateBundle],
    files: tuple[Path, Path],
) -> None:
    alice, bob = people["alice"], people["bob"]
    _, crl_path = files
    crl_path.write_bytes(ca.crl([(alice.serial, NOW, None)], number=2))
    verifier = ChainVerifier(*files)
    assert refused(verifier, alice).reason == "revoked"

    verifier.set_revocations(ca.crl([(bob.serial, NOW, None)], number=3))
    assert accepted(verifier, alice)
    assert refused(verifier, bob).reason == "revoked"
    # The file is no longer read: neither a new CRL nor garbage in it changes anything.
    replace_file(crl_path, ca.crl([(alice.serial, NOW, None)], number=4))
    assert verifier.reload_if_changed() is False
    replace_file(crl_path, b"garbage")
    assert verifier.reload_if_changed() is False
    assert accepted(verifier, alice)
    assert verifier.revoked_serials() == {bob.serial}


def test_crl_of_another_ca_is_refused_and_the_old_state_kept(
    ca: CertificateAuthority, people: dict[str, CertificateBundle], verifier: ChainVerifier
) -> None:
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    verifier.set_revocations(ca.crl([(alice.serial, NOW, None)], number=2), [bob.serial])
    # Same trust domain, so the same issuer name: only the signature tells them apart.
    twin = CertificateAuthority.create("corp.example", now=NOW)
    stranger = CertificateAuthority.create("other.example", now=NOW)
    assert twin.certificate.subject == ca.certificate.subject
    for impostor in (twin, stranger):
        with pytest.raises(PkiError, match="the pushed CRL is not signed by the trusted CA"):
            verifier.set_revocations(impostor.crl([(carol.serial, NOW, None)], number=9))
    with pytest.raises(PkiError, match="the pushed CRL is not a valid PEM CRL"):
        verifier.set_revocations(b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n")
    with pytest.raises(PkiError, match="blocked serial must be a positive integer"):
        verifier.set_revocations(None, [carol.serial, 0])

    assert verifier.revoked_serials() == {alice.serial, bob.serial}
    assert refused(verifier, alice).reason == "revoked"
    assert "control plane" in refused(verifier, bob).detail
    assert accepted(verifier, carol)


def test_a_bad_first_push_keeps_the_crl_file(
    ca: CertificateAuthority,
    people: dict[str, CertificateBundle],
    files: tuple[Path, Path],
) -> None:
    alice, bob = people["alice"], people["bob"]
    _, crl_path = files
    crl_path.write_bytes(ca.crl([(alice.serial, NOW, None)], number=2))
    verifier = ChainVerifier(*files)
    twin = CertificateAuthority.create("corp.example", now=NOW)
    with pytest.raises(PkiError, match="not signed by the trusted CA"):
        verifier.set_revocations(twin.crl([], number=3), [bob.serial])
    assert verifier.revoked_serials() == {alice.serial}
    assert accepted(verifier, bob)
    # Still following the file.
    replace_file(crl_path, ca.crl([(bob.serial, NOW, None)], number=3))
    assert verifier.reload_if_changed() is True
    assert refused(verifier, bob).reason == "revoked"


def test_ca_file_reload_keeps_the_pushed_crl(
    ca: CertificateAuthority,
    people: dict[str, CertificateBundle],
    files: tuple[Path, Path],
    verifier: ChainVerifier,
) -> None:
    alice, bob = people["alice"], people["bob"]
    ca_path, crl_path = files
    verifier.set_revocations(ca.crl([(alice.serial, NOW, None)], number=2), [bob.serial])
    assert verifier.reload_if_changed() is False

    replace_file(ca_path, ca.cert_pem)
    replace_file(crl_path, ca.crl([], number=3))
    assert verifier.reload_if_changed() is True
    assert verifier.reload_if_changed() is False
    assert refused(verifier, alice).reason == "revoked"
    assert refused(verifier, bob).reason == "revoked"
    assert verifier.revoked_serials() == {alice.serial, bob.serial}

    # A rotated CA is still picked up from the file; the pushed revocations stay.
    rotated = CertificateAuthority.create("corp.example", now=NOW)
    dave = rotated.issue("client", "dave", now=NOW)
    assert refused(verifier, dave).reason == "unknown_ca"
    replace_file(ca_path, rotated.cert_pem)
    assert verifier.reload_if_changed() is True
    assert accepted(verifier, dave)
    assert verifier.revoked_serials() == {alice.serial, bob.serial}
    # ... and the next push is checked against the new CA.
    verifier.set_revocations(rotated.crl([(dave.serial, NOW, None)], number=1))
    assert refused(verifier, dave).reason == "revoked"
    with pytest.raises(PkiError, match="not signed by the trusted CA"):
        verifier.set_revocations(ca.crl([], number=5))


def test_verifier_without_crl_file_accepts_a_push(
    ca: CertificateAuthority, people: dict[str, CertificateBundle], files: tuple[Path, Path]
) -> None:
    verifier = ChainVerifier(files[0])
    assert verifier.revoked_serials() == frozenset()
    verifier.set_revocations(ca.crl([(people["alice"].serial, NOW, None)], number=1))
    assert refused(verifier, people["alice"]).reason == "revoked"
    assert verifier.reload_if_changed() is False
