"""The impact of a candidate policy, replayed over audit records stored in the database (on
SQLite and PostgreSQL)."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient

from zgate_control.db import Database
from zgate_control.models import AuditRecord, Client, utc_now

Auth = Callable[..., dict[str, str]]

POLICIES = "/api/v1/policies"
IMPACT = f"{POLICIES}/impact"

#: The policy the flows were decided by: eng (alice, and dba through nesting) reach the database.
V1 = """\
groups:
  eng: [alice, group:dba]
  dba: [bob]
rules:
  - id: eng-db
    action: allow
    from: [group:eng]
    to: [10.1.0.0/24]
    ports: [tcp/5432]
  - id: web
    action: allow
    from: ["*"]
    to: [10.2.0.0/16]
    ports: [tcp/443]
"""
#: The candidate: alice leaves eng, bob gets ssh.
V2 = (
    V1.replace("eng: [alice, group:dba]", "eng: [group:dba]")
    + """\
  - id: ssh
    action: allow
    from: [bob]
    to: [10.3.0.0/24]
    ports: [tcp/22]
"""
)


def create(client: TestClient, text: str) -> dict[str, Any]:
    """Store a policy version."""
    response = client.post(POLICIES, json={"yaml": text})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


_seq = itertools.count(1)


def flow(
    client: str,
    proto: str,
    dst: str,
    dport: int,
    verdict: str,
    rule: str,
    ts: datetime,
    fqdn: str | None = None,
) -> AuditRecord:
    """A stored flow.allow/flow.deny record (the chain fields are not what is tested here)."""
    seq = next(_seq)
    record: dict[str, Any] = {"event": f"flow.{verdict}", "client": client, "dst": dst}
    return AuditRecord(
        id=uuid.uuid4().hex,
        relay_id="relay-1",
        chain="c" * 32,
        seq=seq,
        ts=ts,
        event=f"flow.{verdict}",
        client=client,
        session="s1",
        proto=proto,
        src="100.64.0.2",
        sport=40000 + seq,
        dst=dst,
        dport=dport,
        fqdn=fqdn,
        verdict=verdict,
        rule=rule,
        policy_version="v1digest",
        prev="0" * 64,
        hash=f"{seq:064x}",
        record=record,
    )


def fill(database: Database, now: datetime) -> None:
    """alice: 213 flows to the database in the window, 5 before it; bob: web and ssh."""
    hour = timedelta(hours=1)
    rows = [
        flow("alice", "tcp", "10.1.0.5", 5432, "allow", "eng-db", now - i * hour / 2, "db.corp")
        for i in range(1, 214)
    ]
    rows += [
        flow("alice", "tcp", "10.1.0.5", 5432, "allow", "eng-db", now - timedelta(days=8 + i))
        for i in range(5)
    ]
    rows += [flow("bob", "tcp", "10.2.0.7", 443, "allow", "web", now - i * hour) for i in (1, 2)]
    rows += [flow("bob", "tcp", "10.3.0.9", 22, "deny", "default", now - hour) for _ in range(3)]
    # carol is in eng by her certificate (the clients table), not by the policy: she keeps it.
    rows += [
        flow("carol", "tcp", "10.1.0.6", 5432, "allow", "eng-db", now - hour) for _ in range(4)
    ]
    rows.append(flow("dave", "sctp", "10.2.0.1", 9, "deny", "default", now - hour))
    rows.append(flow("erin", "icmp", "10.2.0.1", 4711, "deny", "default", now - hour))
    with database.session() as session:
        session.add_all(rows)
        session.add(Client(id="alice", groups=[], created_at=now, created_by="tests"))
        session.add(Client(id="bob", groups=["dba"], created_at=now, created_by="tests"))
        session.add(Client(id="carol", groups=["eng"], created_at=now, created_by="tests"))


def test_impact_lists_who_loses_and_gains_what(
    client: TestClient, database: Database, auth: Auth
) -> None:
    fill(database, utc_now())
    create(client, V1)
    v2 = create(client, V2)
    response = client.post(IMPACT, json={"version_id": v2["id"]}, headers=auth("viewer"))
    assert response.status_code == 200, response.text
    body = response.json()
    until = datetime.fromisoformat(body["window"]["until"])
    since = datetime.fromisoformat(body["window"]["since"])
    assert until - since == timedelta(days=7)
    assert body["flows_considered"] == 213 + 2 + 3 + 4 + 1 + 1  # not the 5 older flows
    assert body["distinct"] == 6 and body["undecidable"] == 0
    changes = [
        (
            c["client"],
            c["change"],
            c["proto"],
            c["dst"],
            c["dport"],
            c["flows"],
            c["old_rule"],
            c["new_rule"],
        )
        for c in body["changes"]
    ]
    assert changes == [
        ("alice", "loses", "tcp", "10.1.0.5", 5432, 213, "eng-db", "default"),
        ("bob", "gains", "tcp", "10.3.0.9", 22, 3, "default", "ssh"),
    ]
    assert body["summary"] == [
        "alice loses tcp/5432 to db.corp: 213 flows in the last 7 days",
        "bob gains tcp/22 to 10.3.0.9: 3 flows in the last 7 days",
    ]
    assert body["changes"][0]["fqdn"] == "db.corp"
    assert body["by_client"] == [
        {"client": "alice", "loses": 213, "gains": 0},
        {"client": "bob", "loses": 0, "gains": 3},
    ]
    assert body["by_rule"] == [
        {"rule": "default", "loses": 213, "gains": 0},
        {"rule": "ssh", "loses": 0, "gains": 3},
    ]
    assert body["truncated"] is False
    assert body["notes"] == ["2 client(s) not registered, replayed without groups: dave, erin"]


def test_impact_window_client_limit_and_yaml_candidate(
    client: TestClient, database: Database
) -> None:
    now = utc_now()
    fill(database, now)
    window = {
        "since": (now - timedelta(days=20)).isoformat(),
        "until": (now - timedelta(days=7, hours=12)).isoformat(),
    }
    older = client.post(IMPACT, json={"yaml": V2, **window}).json()
    assert older["flows_considered"] == 5
    assert older["summary"][0].startswith("alice loses tcp/5432 to 10.1.0.5: 5 flows between ")

    one = client.post(IMPACT, json={"yaml": V2, "client": "bob", "limit": 1}).json()
    assert [c["client"] for c in one["changes"]] == ["bob"] and one["truncated"] is False
    capped = client.post(IMPACT, json={"yaml": V2, "limit": 1}).json()
    assert len(capped["changes"]) == 1 and capped["truncated"] is True
    assert len(capped["by_client"]) == 2  # the totals count every change

    # alice is back in eng: nothing changes for her.
    same = client.post(IMPACT, json={"yaml": V1}).json()
    assert same["changes"] == [] and same["summary"] == []


def test_impact_refuses_bad_requests(client: TestClient) -> None:
    neither = client.post(IMPACT, json={})
    assert neither.status_code == 422
    assert "exactly one of version_id and yaml" in neither.json()["detail"]
    assert client.post(IMPACT, json={"version_id": 1, "yaml": V1}).status_code == 422
    assert client.post(IMPACT, json={"version_id": 99}).status_code == 404
    broken = client.post(IMPACT, json={"yaml": "rules: 3\n"})
    assert broken.status_code == 422 and broken.json()["errors"][0]["line"] == 1
    now = utc_now()
    backwards = {"yaml": V1, "since": now.isoformat(), "until": (now - timedelta(1)).isoformat()}
    assert client.post(IMPACT, json=backwards).status_code == 422
