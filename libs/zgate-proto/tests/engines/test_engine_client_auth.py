"""The engine-neutral part of client-certificate checks (zgate_proto.engines._client_auth):
the once-only refusal record, the alerts for each reason, and the chain check that fails
closed. Both engines' shims are driven end to end in test_engine_conformance.py."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from zgate_pki import REFUSAL_REASONS, CertificateRefused, ChainVerifier, Identity, PkiPaths
from zgate_proto.engines._client_auth import (
    CRYPTO_ERRORS,
    HANDSHAKE_REFUSAL_REASONS,
    REFUSAL_ALERTS,
    RefusalRecord,
    verify_client_chain,
)
from zgate_testkit.pki import Refusals, make_pki

NOW = datetime.now(UTC)


@pytest.fixture
def pki(tmp_path: Path) -> PkiPaths:
    return make_pki(tmp_path / "pki")


def alice(pki: PkiPaths) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pki.leaf_cert("client", "alice").read_bytes())


def test_the_first_refusal_wins_and_is_reported_once() -> None:
    refusals = Refusals()
    record = RefusalRecord(refusals)
    assert record.refusal is None

    record.refuse("revoked", "serial 12")
    record.refuse("handshake_failed", "the alert that followed")

    assert record.refusal == ("revoked", "serial 12")
    assert refusals.seen == [("revoked", "serial 12")]


def test_a_certificate_refusal_is_recorded_with_its_alert() -> None:
    refusals = Refusals()
    record = RefusalRecord(refusals)
    assert record.alert("revoked", "serial 12") == (44, "certificate revoked")
    assert refusals.seen == [("revoked", "serial 12")]


def test_a_failing_callback_does_not_escape() -> None:
    def broken(reason: str, detail: str) -> None:
        raise RuntimeError("metrics down")

    record = RefusalRecord(broken)
    record.refuse("expired", "yesterday")
    assert record.refusal == ("expired", "yesterday")


@pytest.mark.parametrize(
    ("protocol_version", "reason"), [(True, "tls_version"), (False, "handshake_failed")]
)
def test_a_tls_failure_is_tls_version_or_handshake_failed(
    protocol_version: bool, reason: str
) -> None:
    record = RefusalRecord()
    record.tls_failed(ValueError(), protocol_version=protocol_version)
    assert record.refusal == (reason, "ValueError")


def test_only_a_tls_alert_at_close_is_a_refusal() -> None:
    record = RefusalRecord()
    record.closing(0)  # NO_ERROR
    record.closing(CRYPTO_ERRORS.stop)  # past the CRYPTO_ERROR range
    assert record.refusal is None
    record.closing(CRYPTO_ERRORS.start + 48)
    assert record.refusal == ("handshake_failed", "TLS alert 48 from the client")


def test_every_certificate_reason_has_its_alert() -> None:
    assert set(REFUSAL_ALERTS) == set(REFUSAL_REASONS)
    assert set(HANDSHAKE_REFUSAL_REASONS) == {*REFUSAL_REASONS, "tls_version", "handshake_failed"}
    # RFC 8446 section 6.2: certificate_required, unknown_ca, certificate_expired,
    # certificate_revoked, bad_certificate.
    assert {r: a for r, (a, _) in REFUSAL_ALERTS.items()} == {
        "no_certificate": 116,
        "unknown_ca": 48,
        "expired": 45,
        "revoked": 44,
        "bad_certificate": 42,
    }


def test_a_good_chain_names_the_client(pki: PkiPaths) -> None:
    verifier = ChainVerifier(pki.ca_cert, pki.crl)
    identity = verify_client_chain(verifier, alice(pki), [], NOW)
    assert str(identity) == "client/alice"


def test_a_crashing_verifier_fails_closed(pki: PkiPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*args: object) -> Identity:
        raise KeyError("bug")

    verifier = ChainVerifier(pki.ca_cert, pki.crl)
    monkeypatch.setattr(verifier, "verify", crash)
    with pytest.raises(CertificateRefused) as refused:
        verify_client_chain(verifier, alice(pki), [], NOW)
    assert refused.value.reason == "bad_certificate"
    assert "KeyError" in refused.value.detail
