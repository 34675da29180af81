"""Clients: issue, list, ETag/If-Match, disable/enable (blocked), revoke (CRL), re-issue."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cryptography import x509
from fastapi.testclient import TestClient
from sqlalchemy import select

from zgate_control.db import Database
from zgate_control.models import ChangeLogEntry

Auth = Callable[..., dict[str, str]]


def _changes(database: Database, kind: str) -> list[dict[str, Any]]:
    with database.reader() as session:
        rows = session.scalars(
            select(ChangeLogEntry).where(ChangeLogEntry.kind == kind).order_by(ChangeLogEntry.seq)
        )
        return [r.payload for r in rows]


def _create(client: TestClient, ident: str, groups: list[str] | None = None) -> dict[str, Any]:
    response = client.post("/api/v1/clients", json={"id": ident, "groups": groups or []})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def test_create_returns_the_bundle_once(client: TestClient) -> None:
    body = _create(client, "alice", ["eng"])
    bundle = body["bundle"]
    cert = x509.load_pem_x509_certificate(bundle["cert_pem"].encode())
    assert f"{cert.serial_number:x}" == bundle["serial"] == body["client"]["serial"]
    assert bundle["key_pem"].startswith("-----BEGIN PRIVATE KEY-----")
    assert bundle["ca_pem"] == client.get("/api/v1/ca").json()["ca_pem"]
    one = client.get("/api/v1/clients/alice")
    assert one.status_code == 200 and one.headers["etag"] == '"1"'
    assert "bundle" not in one.json() and "key_pem" not in one.text
    assert one.json()["groups"] == ["eng"] and one.json()["created_by"] == "test-admin"
    again = client.post("/api/v1/clients", json={"id": "alice"})
    assert again.status_code == 409
    bad = client.post("/api/v1/clients", json={"id": "bob", "groups": ["no spaces"]})
    assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"
    assert client.post("/api/v1/clients", json={"id": "a/b"}).status_code == 422
    assert client.get("/api/v1/clients/nobody").status_code == 404
    actions = [e["action"] for e in client.get("/api/v1/admin-log").json()["items"]]
    assert "client.create" in actions


def test_roles(client: TestClient, auth: Auth) -> None:
    _create(client, "alice")
    assert (
        client.post("/api/v1/clients", json={"id": "v"}, headers=auth("viewer")).status_code == 403
    )
    assert (
        client.post("/api/v1/clients", json={"id": "o"}, headers=auth("operator")).status_code
        == 201
    )
    assert client.get("/api/v1/clients", headers=auth("viewer")).status_code == 200
    assert client.get("/api/v1/clients", headers=auth("relay")).status_code == 403
    revoke = client.post("/api/v1/clients/alice/revoke", headers=auth("viewer"))
    assert revoke.status_code == 403


def test_list_filters_and_cursor(client: TestClient) -> None:
    for n in range(5):
        _create(client, f"dev-{n}", ["eng"] if n % 2 == 0 else ["ops"])
    _create(client, "laptop", ["eng", "ops"])
    client.patch("/api/v1/clients/dev-1", json={"disabled": True})
    client.post("/api/v1/clients/dev-2/revoke")

    def ids(**params: Any) -> list[str]:
        response = client.get("/api/v1/clients", params=params)
        assert response.status_code == 200, response.text
        return [c["id"] for c in response.json()["items"]]

    assert ids(group="eng") == ["dev-0", "dev-2", "dev-4", "laptop"]
    assert ids(group="ops") == ["dev-1", "dev-3", "laptop"]
    assert ids(group="nobody") == []
    assert ids(disabled=True) == ["dev-1"]
    assert ids(revoked=True) == ["dev-2"]
    assert ids(revoked=False, disabled=False) == ["dev-0", "dev-3", "dev-4", "laptop"]
    assert ids(q="dev-") == [f"dev-{n}" for n in range(5)]
    assert ids(q="%") == []  # a wildcard is a character here
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/api/v1/clients", params=params).json()
        seen += [c["id"] for c in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [*(f"dev-{n}" for n in range(5)), "laptop"]
    assert client.get("/api/v1/clients", params={"cursor": "!!"}).status_code == 400


def test_patch_honours_if_match_and_disable_blocks_the_serial(
    client: TestClient, database: Database
) -> None:
    serial = _create(client, "alice")["client"]["serial"]
    stale = client.patch(
        "/api/v1/clients/alice", json={"disabled": True}, headers={"If-Match": '"7"'}
    )
    assert stale.status_code == 412
    assert stale.json()["type"] == "urn:zgate:problem:stale" and stale.json()["etag"] == '"1"'
    done = client.patch(
        "/api/v1/clients/alice", json={"disabled": True}, headers={"If-Match": '"1"'}
    )
    assert done.status_code == 200 and done.headers["etag"] == '"2"'
    assert done.json()["disabled"] is True and done.json()["row_version"] == 2
    changes = _changes(database, "revocation")
    assert changes[-1]["blocked"] == [serial] and changes[-1]["action"] == "disable"
    assert changes[-1]["client"] == "alice"
    # Without If-Match the change applies (If-Match is optional).
    enabled = client.patch("/api/v1/clients/alice", json={"disabled": False})
    assert enabled.headers["etag"] == '"3"'
    changes = _changes(database, "revocation")
    assert changes[-1]["blocked"] == [] and changes[-1]["action"] == "enable"
    # The same state again changes nothing and appends nothing.
    client.patch("/api/v1/clients/alice", json={"disabled": False})
    assert len(_changes(database, "revocation")) == 2
    assert client.get("/api/v1/clients/alice").headers["etag"] == '"3"'
    metrics = client.get("/metrics").text
    assert 'zgate_control_changes_total{kind="revocation"} 2.0' in metrics


def test_groups_live_in_the_certificate(client: TestClient) -> None:
    _create(client, "alice", ["eng"])
    same = client.patch("/api/v1/clients/alice", json={"groups": ["eng"]})
    assert same.status_code == 200
    other = client.patch("/api/v1/clients/alice", json={"groups": ["ops"]})
    assert other.status_code == 409
    assert "certificate" in other.json()["detail"]
    assert other.json()["type"] == "urn:zgate:problem:groups-in-certificate"


def test_revoke_puts_the_serial_in_the_crl_and_appends_a_revocation(
    client: TestClient, database: Database
) -> None:
    serial = _create(client, "alice")["client"]["serial"]
    revoked = client.post("/api/v1/clients/alice/revoke", json={"reason": "keyCompromise"})
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    crl = x509.load_pem_x509_crl(client.get("/api/v1/ca").json()["crl_pem"].encode())
    entry = crl.get_revoked_certificate_by_serial_number(int(serial, 16))
    assert entry is not None
    change = _changes(database, "revocation")[-1]
    assert change["action"] == "revoke" and change["client"] == "alice"
    listed = x509.load_pem_x509_crl(change["crl_pem"].encode())
    assert listed.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None
    assert client.post("/api/v1/clients/alice/revoke").status_code == 409
    # A revoked client cannot be disabled, and a revoked client's serial is not "blocked".
    assert client.patch("/api/v1/clients/alice", json={"disabled": True}).status_code == 409


def test_reissue_after_revoke(client: TestClient, database: Database) -> None:
    first = _create(client, "alice", ["eng"])["client"]["serial"]
    assert client.post("/api/v1/clients/alice/certificate", json={}).status_code == 409
    client.patch("/api/v1/clients/alice", json={"disabled": True})
    client.post("/api/v1/clients/alice/revoke")
    etag = client.get("/api/v1/clients/alice").headers["etag"]
    assert (
        client.post(
            "/api/v1/clients/alice/certificate", json={}, headers={"If-Match": '"1"'}
        ).status_code
        == 412
    )
    again = client.post(
        "/api/v1/clients/alice/certificate", json={"groups": ["ops"]}, headers={"If-Match": etag}
    )
    assert again.status_code == 201, again.text
    body = again.json()
    assert body["client"]["serial"] != first and body["client"]["revoked_at"] is None
    assert body["client"]["groups"] == ["ops"]
    cert = x509.load_pem_x509_certificate(body["bundle"]["cert_pem"].encode())
    assert f"{cert.serial_number:x}" == body["client"]["serial"]
    # Still disabled: the new serial is blocked at once.
    assert _changes(database, "revocation")[-1]["blocked"] == [body["client"]["serial"]]
