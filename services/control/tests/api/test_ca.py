"""The CA kept in the database: created once, issues verifiable bundles, revokes into a CRL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient
from sqlalchemy import select

from zgate_control import ca
from zgate_control.db import Database
from zgate_control.models import Authority, Certificate
from zgate_pki import CertificateRefused, ChainVerifier

Auth = Callable[..., dict[str, str]]


def _verifier(tmp_path: Path, ca_pem: str) -> ChainVerifier:
    path = tmp_path / "ca.pem"
    path.write_text(ca_pem)
    return ChainVerifier(path)


def test_ensure_authority_creates_the_ca_once(database: Database) -> None:
    with database.session() as session:
        first = ca.ensure_authority(session, "test.zgate").ca_cert_pem
        again = ca.ensure_authority(session, "other.zgate")
        assert again.ca_cert_pem == first and again.trust_domain == "test.zgate"
        assert ca.load_authority(session).trust_domain == "test.zgate"
        # The key at rest is PEM in the row (documented: protect the database as the CA).
        assert again.ca_key_pem.startswith("-----BEGIN PRIVATE KEY-----")
    with database.reader() as session:
        assert len(list(session.scalars(select(Authority)))) == 1


def test_issued_bundle_verifies_and_is_recorded(database: Database, tmp_path: Path) -> None:
    with database.session() as session:
        bundle = ca.issue_bundle(session, "client", "alice", groups=["eng", "eng", "ops"])
    with database.reader() as session:
        row = session.get(Certificate, ca.serial_hex(bundle.serial))
        assert row is not None and row.kind == "client" and row.ident == "alice"
        assert row.groups == ["eng", "ops"] and row.revoked_at is None
        ca_pem = ca.ca_pem(session)
    leaf = x509.load_pem_x509_certificate(bundle.cert_pem)
    identity = _verifier(tmp_path, ca_pem).verify(leaf, [], datetime.now(UTC))
    assert (identity.kind, identity.ident, identity.groups) == ("client", "alice", ("eng", "ops"))
    assert identity.trust_domain == "test.zgate"


def test_revoke_bumps_the_crl_number_and_lists_every_revoked_serial(
    database: Database, tmp_path: Path
) -> None:
    with database.session() as session:
        a = ca.issue_bundle(session, "client", "a")
        b = ca.issue_bundle(session, "connector", "b")
        kept = ca.issue_bundle(session, "client", "c")
        number = session.scalars(select(Authority.crl_number)).one()
    with database.session() as session:
        assert ca.revoke(session, ca.serial_hex(a.serial), x509.ReasonFlags.key_compromise)
        assert ca.revoke(session, ca.serial_hex(b.serial))
        assert not ca.revoke(session, ca.serial_hex(a.serial))  # already revoked
        with pytest.raises(KeyError):
            ca.revoke(session, "abcdef")
    with database.reader() as session:
        assert session.scalars(select(Authority.crl_number)).one() == number + 2
        crl = x509.load_pem_x509_crl(ca.crl_pem(session).encode())
        ca_pem = ca.ca_pem(session)
    assert {r.serial_number for r in crl} == {a.serial, b.serial}
    verifier = _verifier(tmp_path, ca_pem)
    verifier.set_revocations(crl.public_bytes(serialization.Encoding.PEM))
    now = datetime.now(UTC)
    with pytest.raises(CertificateRefused) as refused:
        verifier.verify(x509.load_pem_x509_certificate(a.cert_pem), [], now)
    assert refused.value.reason == "revoked"
    assert verifier.verify(x509.load_pem_x509_certificate(kept.cert_pem), [], now).ident == "c"


def test_get_ca_serves_the_ca_and_crl_to_every_role(
    client: TestClient, auth: Auth, database: Database
) -> None:
    with database.reader() as session:
        expected = ca.ca_pem(session)
    for role in ("admin", "operator", "viewer", "relay"):
        body = client.get("/api/v1/ca", headers=auth(role)).json()
        assert body["ca_pem"] == expected
        assert body["crl_pem"].startswith("-----BEGIN X509 CRL-----")
