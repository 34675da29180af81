"""Relays: server certificates, heartbeats (registration, sessions, last seen), acks, lists."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from cryptography import x509
from fastapi.testclient import TestClient

from zgate_control import changelog
from zgate_control.db import Database
from zgate_control.models import Relay

Auth = Callable[..., dict[str, str]]


def _beat(sessions: list[dict[str, Any]], applied: int = 0) -> dict[str, Any]:
    return {
        "applied_seq": applied,
        "policy_version": None,
        "software": "zgate-relay 0.1.0",
        "address": "192.0.2.1:443",
        "following": True,
        "sessions": sessions,
    }


def _session(sid: str, who: str, kind: str = "client") -> dict[str, Any]:
    return {
        "session": sid,
        "client": who,
        "kind": kind,
        "addresses": ["100.64.0.2"],
        "mode": "tun",
        "since": "2026-01-01T00:00:00Z",
        "bytes_in": 10,
        "bytes_out": 20,
    }


def test_relay_certificate_is_admin_only(client: TestClient, auth: Auth) -> None:
    body = {"names": ["relay.example.com"], "ips": ["192.0.2.1"]}
    denied = client.post("/api/v1/relays/r1/certificate", json=body, headers=auth("operator"))
    assert denied.status_code == 403
    response = client.post("/api/v1/relays/r1/certificate", json=body)
    assert response.status_code == 201, response.text
    cert = x509.load_pem_x509_certificate(response.json()["bundle"]["cert_pem"].encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["relay.example.com"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("192.0.2.1")]
    assert client.post("/api/v1/relays/r1/certificate", json={}).status_code == 422
    bad = client.post("/api/v1/relays/r1/certificate", json={"names": ["not a name"]})
    assert bad.status_code == 422


def test_heartbeat_registers_lists_sessions_and_updates_last_seen(
    client: TestClient, auth: Auth, database: Database
) -> None:
    client.post("/api/v1/clients", json={"id": "alice"})
    client.post("/api/v1/connectors", json={"id": "site-a", "prefixes": ["10.0.0.0/8"]})
    relay = auth("relay", relay_id="r1")
    assert client.get("/api/v1/relays/r1").status_code == 404
    sessions = [_session("s1", "alice"), _session("s2", "site-a", "connector")]
    answer = client.post("/api/v1/relays/r1/heartbeat", json=_beat(sessions), headers=relay)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"relay": "r1", "head_seq": 1}  # the connector's change
    detail = client.get("/api/v1/relays/r1").json()
    assert detail["sessions"] == 2 and detail["behind"] == 1
    assert detail["software"] == "zgate-relay 0.1.0" and detail["last_heartbeat_at"]
    assert [s["session"] for s in detail["live_sessions"]] == ["s1", "s2"]
    alice = client.get("/api/v1/clients/alice").json()
    assert alice["last_relay"] == "r1" and alice["last_seen_at"] is not None
    assert client.get("/api/v1/connectors/site-a").json()["last_relay"] == "r1"
    # The ETag does not move with last_seen_at (not an edit).
    assert client.get("/api/v1/clients/alice").headers["etag"] == '"1"'

    client.post("/api/v1/relays/r2/heartbeat", json=_beat([_session("s9", "alice")]))
    listed = client.get("/api/v1/sessions").json()["items"]
    assert [(s["relay"], s["session"]) for s in listed] == [
        ("r1", "s1"),
        ("r1", "s2"),
        ("r2", "s9"),
    ]
    only = client.get("/api/v1/sessions", params={"client": "alice", "relay": "r1"}).json()
    assert [s["session"] for s in only["items"]] == ["s1"]
    page = client.get("/api/v1/sessions", params={"limit": 2}).json()
    rest = client.get("/api/v1/sessions", params={"cursor": page["next_cursor"]}).json()
    assert [s["session"] for s in page["items"] + rest["items"]] == ["s1", "s2", "s9"]

    # The next heartbeat replaces the list wholesale.
    client.post("/api/v1/relays/r1/heartbeat", json=_beat([_session("s3", "alice")]), headers=relay)
    assert [s["session"] for s in client.get("/api/v1/relays/r1").json()["live_sessions"]] == ["s3"]
    assert [r["id"] for r in client.get("/api/v1/relays").json()["items"]] == ["r1", "r2"]
    assert client.get("/api/v1/relays", headers=auth("relay")).status_code == 403


def test_relay_tokens_speak_for_their_relay_only(
    client: TestClient, auth: Auth, database: Database
) -> None:
    r1 = auth("relay", relay_id="r1")
    assert client.post("/api/v1/relays/r2/heartbeat", json=_beat([]), headers=r1).status_code == 403
    assert client.post("/api/v1/relays/r2/ack", json={"seq": 1}, headers=r1).status_code == 403
    assert client.post("/api/v1/relays/r1/ack", json={"seq": 0}, headers=r1).status_code == 204
    unbound = auth("relay")
    assert (
        client.post("/api/v1/relays/r3/heartbeat", json=_beat([]), headers=unbound).status_code
        == 200
    )
    viewer = auth("viewer")
    assert (
        client.post("/api/v1/relays/r1/heartbeat", json=_beat([]), headers=viewer).status_code
        == 403
    )


def test_ack_records_the_applied_seq(client: TestClient, auth: Auth, database: Database) -> None:
    relay = auth("relay", relay_id="r1")
    client.post("/api/v1/relays/r1/heartbeat", json=_beat([]), headers=relay)
    assert client.post("/api/v1/relays/r1/ack", json={"seq": 5}, headers=relay).status_code == 204
    with database.reader() as session:
        row = session.get(Relay, "r1")
        assert row is not None and row.applied_seq == 5
    assert client.post("/api/v1/relays/r1/ack", json={"seq": -1}, headers=relay).status_code == 422
    # Machine traffic stays out of the admin log.
    actions = [e["path"] for e in client.get("/api/v1/admin-log").json()["items"]]
    assert not any(path.endswith(("/ack", "/heartbeat")) for path in actions)


def test_ending_a_session_appends_a_change_for_its_relay(
    client: TestClient, auth: Auth, database: Database
) -> None:
    relay = auth("relay", relay_id="r1")
    client.post("/api/v1/relays/r1/heartbeat", json=_beat([_session("s1", "alice")]), headers=relay)
    path = "/api/v1/sessions/r1/s1"
    assert client.delete(path, headers=auth("viewer")).status_code == 403
    assert client.delete("/api/v1/sessions/r1/nope", headers=auth("operator")).status_code == 404
    answer = client.delete(path, headers=auth("operator"))
    assert answer.status_code == 202, answer.text
    assert answer.json() == {"relay": "r1", "session": "s1", "client": "alice", "seq": 1}
    with database.reader() as session:
        [entry] = changelog.changes_after(session, 0, 10)
    assert entry["kind"] == "session.end"
    assert entry["payload"] == {"relay": "r1", "session": "s1"}
    # A new relay (at 0) follows an events-only log as rows: a snapshot would swallow them.
    answer = client.get("/api/v1/relays/r1/changes?since=0&wait=0", headers=relay).json()
    assert answer["type"] == "changes" and [c["kind"] for c in answer["changes"]] == ["session.end"]
    client.post("/api/v1/clients", json={"id": "dave"})
    client.post("/api/v1/clients/dave/revoke")  # state: now a relay at 0 needs a snapshot
    answer = client.get("/api/v1/relays/r1/changes?since=0&wait=0", headers=relay).json()
    assert answer["type"] == "snapshot"
    logged = client.get("/api/v1/admin-log").json()["items"]
    assert any(e["action"] == "session.end" and e["target"] == "r1/s1" for e in logged)
