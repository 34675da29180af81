"""Connectors: issue, prefixes (whole set in the change log), If-Match, revoke."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cryptography import x509
from fastapi.testclient import TestClient
from sqlalchemy import select

from zgate_control.db import Database
from zgate_control.models import ChangeLogEntry
from zgate_pki import identity_from_certificate

Auth = Callable[..., dict[str, str]]


def _last(database: Database, kind: str) -> dict[str, Any]:
    with database.reader() as session:
        row = session.scalars(
            select(ChangeLogEntry)
            .where(ChangeLogEntry.kind == kind)
            .order_by(ChangeLogEntry.seq.desc())
            .limit(1)
        ).one()
        return row.payload


def test_create_issues_a_connector_bundle_and_appends_the_set(
    client: TestClient, database: Database
) -> None:
    response = client.post(
        "/api/v1/connectors", json={"id": "site-a", "prefixes": ["10.20.0.0/24", "10.20.0.0/24"]}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    cert = x509.load_pem_x509_certificate(body["bundle"]["cert_pem"].encode())
    identity = identity_from_certificate(cert)
    assert (identity.kind, identity.ident) == ("connector", "site-a")
    assert body["connector"]["prefixes"] == ["10.20.0.0/24"]
    assert _last(database, "connectors") == {"connectors": {"site-a": ["10.20.0.0/24"]}}
    client.post("/api/v1/connectors", json={"id": "site-b", "prefixes": ["fd00::/64"]})
    assert _last(database, "connectors") == {
        "connectors": {"site-a": ["10.20.0.0/24"], "site-b": ["fd00::/64"]}
    }
    assert (
        client.post("/api/v1/connectors", json={"id": "site-a", "prefixes": []}).status_code == 409
    )
    bad = client.post("/api/v1/connectors", json={"id": "c", "prefixes": ["10.0.0.1/24"]})
    assert bad.status_code == 422 and "CIDR" in bad.json()["detail"]
    listed = client.get("/api/v1/connectors", params={"q": "b"}).json()["items"]
    assert [c["id"] for c in listed] == ["site-b"]


def test_patch_prefixes_with_if_match(client: TestClient, database: Database, auth: Auth) -> None:
    client.post("/api/v1/connectors", json={"id": "site-a", "prefixes": ["10.20.0.0/24"]})
    etag = client.get("/api/v1/connectors/site-a").headers["etag"]
    assert etag == '"1"'
    new = {"prefixes": ["10.20.0.0/24", "10.21.0.0/16"]}
    stale = client.patch("/api/v1/connectors/site-a", json=new, headers={"If-Match": '"0"'})
    assert stale.status_code == 412
    viewer = client.patch("/api/v1/connectors/site-a", json=new, headers=auth("viewer"))
    assert viewer.status_code == 403
    done = client.patch("/api/v1/connectors/site-a", json=new, headers={"If-Match": etag})
    assert done.status_code == 200 and done.headers["etag"] == '"2"'
    assert _last(database, "connectors")["connectors"]["site-a"] == new["prefixes"]
    assert client.patch("/api/v1/connectors/nope", json=new).status_code == 404


def test_revoke_withdraws_the_prefixes_and_lists_the_serial(
    client: TestClient, database: Database
) -> None:
    body = client.post("/api/v1/connectors", json={"id": "site-a", "prefixes": ["10.1.0.0/16"]})
    serial = body.json()["connector"]["serial"]
    revoked = client.post("/api/v1/connectors/site-a/revoke")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert _last(database, "connectors") == {"connectors": {}}
    change = _last(database, "revocation")
    crl = x509.load_pem_x509_crl(change["crl_pem"].encode())
    assert crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None
    assert client.post("/api/v1/connectors/site-a/revoke").status_code == 409
    patch = client.patch("/api/v1/connectors/site-a", json={"prefixes": []})
    assert patch.status_code == 409
    assert [c["id"] for c in client.get("/api/v1/connectors?revoked=true").json()["items"]] == [
        "site-a"
    ]
