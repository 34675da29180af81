"""Policy versions over the API: checked on submission, published and rolled back through the
change log, compared, explained; on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from zgate_control.db import Database
from zgate_control.models import ChangeLogEntry, Client, utc_now

Auth = Callable[..., dict[str, str]]

POLICIES = "/api/v1/policies"

V1 = """\
default: deny
groups:
  eng: [alice, group:dba]
  dba: [bob]
resources:
  db:
    - cidr: 10.1.0.0/24
      ports: [tcp/5432]
rules:
  - id: eng-db
    action: allow
    from: [group:eng]
    to: [db]
  - id: web
    action: allow
    from: ["*"]
    to: [10.2.0.0/16]
    ports: [tcp/443]
tests:
  - name: alice reaches the database
    from: alice
    to: tcp://10.1.0.5:5432
    expect: allow
    rule: eng-db
"""

#: v1 with alice out of eng, web changed, a new ssh rule first, the default unchanged.
V2 = """\
default: deny
groups:
  eng: [group:dba]
  dba: [bob]
resources:
  db:
    - cidr: 10.1.0.0/24
      ports: [tcp/5432]
rules:
  - id: ssh
    action: allow
    from: [bob]
    to: [10.3.0.0/24]
    ports: [tcp/22]
  - id: web
    action: allow
    from: ["*"]
    to: [10.2.0.0/16]
    ports: [tcp/443, tcp/80]
  - id: eng-db
    action: allow
    from: [group:eng]
    to: [db]
"""


def create(client: TestClient, text: str, comment: str = "", **kwargs: Any) -> dict[str, Any]:
    """Submit a policy that must be accepted; its version."""
    response = client.post(POLICIES, json={"yaml": text, "comment": comment}, **kwargs)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def changes(database: Database) -> list[ChangeLogEntry]:
    """Every change in the log, oldest first."""
    with database.reader() as session:
        return list(session.scalars(select(ChangeLogEntry).order_by(ChangeLogEntry.seq)))


def test_a_broken_policy_is_refused_with_lines_and_columns(client: TestClient) -> None:
    text = V1.replace("action: allow\n    from: [group:eng]", "action: alow\n    from: [group:eng]")
    response = client.post(POLICIES, json={"yaml": text})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == "urn:zgate:problem:policy-invalid"
    [error] = body["errors"]
    assert (error["line"], error["column"]) == (11, 13)
    assert "rules[0].action" in error["message"] and "alow" in error["message"]
    assert body["tests"] == []

    response = client.post(POLICIES, json={"yaml": "rules: [\n"})
    assert response.status_code == 422
    assert response.json()["errors"][0]["line"] == 2
    assert client.get(POLICIES).json()["items"] == []


def test_a_failing_inline_test_refuses_the_policy(client: TestClient) -> None:
    text = V1 + "  - from: carol\n    to: tcp://10.1.0.5:5432\n    expect: allow\n"
    response = client.post(POLICIES, json={"yaml": text})
    assert response.status_code == 422
    body = response.json()
    assert body["detail"] == "1 of 2 inline tests fail"
    assert [(t["name"], t["passed"]) for t in body["tests"]] == [
        ("alice reaches the database", True),
        ("tests[1]", False),
    ]
    assert "deny by default (expected allow)" in body["tests"][1]["description"]
    [error] = body["errors"]
    assert error["line"] == 25 and error["message"].startswith("tests[1]: FAIL")


def test_versions_are_stored_once_and_listed_newest_first(client: TestClient, auth: Auth) -> None:
    first = create(client, V1, "first", headers=auth("operator"))
    assert first["author"] == "test-operator" and first["comment"] == "first"
    assert first["rules"] == 2 and len(first["digest"]) == 12
    assert first["tests"] == [
        {
            "name": "alice reaches the database",
            "passed": True,
            "description": "alice reaches the database: alice -> tcp://10.1.0.5:5432: "
            "allow by eng-db (expected allow by eng-db)",
        }
    ]
    again = client.post(POLICIES, json={"yaml": V1, "comment": "again"})
    assert again.status_code == 200
    assert again.json()["id"] == first["id"] and again.json()["comment"] == "first"
    second = create(client, V2)
    # Only comments differ: the same digest, but what the operator wrote is a new version.
    third = create(client, "# reviewed\n" + V2)
    assert third["digest"] == second["digest"] and third["id"] != second["id"]

    page = client.get(POLICIES, params={"limit": 2}).json()
    assert [v["id"] for v in page["items"]] == [third["id"], second["id"]]
    rest = client.get(POLICIES, params={"cursor": page["next_cursor"]}).json()
    assert [v["id"] for v in rest["items"]] == [first["id"]] and rest["next_cursor"] is None
    one = client.get(f"{POLICIES}/{first['id']}").json()
    assert one["yaml"] == V1 and one["published"] is False
    assert client.get(f"{POLICIES}/999").status_code == 404


def test_a_policy_over_1_mib_is_refused(client: TestClient) -> None:
    text = V1 + "# " + "x" * (1 << 20) + "\n"
    response = client.post(POLICIES, json={"yaml": text})
    assert response.status_code == 413
    assert "limit is 1048576" in response.json()["detail"]


def test_publish_appends_a_policy_change_with_the_yaml(
    client: TestClient, database: Database
) -> None:
    assert client.get(f"{POLICIES}/published").status_code == 404
    v1 = create(client, V1)
    before = len(changes(database))
    response = client.post(f"{POLICIES}/{v1['id']}/publish")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["changed"] is True and body["version"]["yaml"] == V1
    assert body["publication"]["kind"] == "publish"
    assert body["publication"]["published_by"] == "test-admin"
    log = changes(database)
    assert len(log) == before + 1
    assert log[-1].seq == body["seq"] and log[-1].kind == "policy"
    assert log[-1].payload == {
        "version_id": v1["id"],
        "digest": v1["digest"],
        "yaml": V1,
        "kind": "publish",
    }
    published = client.get(f"{POLICIES}/published")
    assert published.headers["etag"] == f'"pub-{body["publication"]["id"]}"'
    assert published.headers["etag"] == response.headers["etag"]
    assert published.json()["version"]["id"] == v1["id"]
    listed = client.get(POLICIES).json()["items"]
    assert [v["published"] for v in listed] == [True]

    # The version in force again: a no-op, nothing for the relays.
    again = client.post(f"{POLICIES}/{v1['id']}/publish")
    assert again.status_code == 200 and again.json()["changed"] is False
    assert again.headers["etag"] == published.headers["etag"]
    assert len(changes(database)) == before + 1
    assert client.post(f"{POLICIES}/999/publish").status_code == 404

    log_actions = client.get("/api/v1/admin-log", params={"action": "policy.publish"}).json()
    assert [(e["target"], e["status"]) for e in log_actions["items"]] == [
        (f"v{v1['id']}", 200),
        (f"v{v1['id']}", 200),
    ]


def test_rollback_goes_back_to_a_version_published_before(
    client: TestClient, database: Database
) -> None:
    v1, v2 = create(client, V1), create(client, V2)
    refused = client.post(f"{POLICIES}/{v2['id']}/rollback")
    assert refused.status_code == 409 and "never published" in refused.json()["detail"]
    client.post(f"{POLICIES}/{v1['id']}/publish").raise_for_status()
    client.post(f"{POLICIES}/{v2['id']}/publish").raise_for_status()
    back = client.post(f"{POLICIES}/{v1['id']}/rollback")
    assert back.status_code == 200 and back.json()["changed"] is True
    assert back.json()["publication"]["kind"] == "rollback"
    assert client.get(f"{POLICIES}/published").json()["version"]["id"] == v1["id"]
    kinds = [(c.payload["version_id"], c.payload["kind"]) for c in changes(database)]
    assert kinds[-3:] == [(v1["id"], "publish"), (v2["id"], "publish"), (v1["id"], "rollback")]


def test_publish_with_a_stale_if_match_gets_412(client: TestClient) -> None:
    v1, v2 = create(client, V1), create(client, V2)
    stale = client.post(f"{POLICIES}/{v1['id']}/publish", headers={"If-Match": '"pub-1"'})
    assert stale.status_code == 412  # nothing is published yet
    etag = client.post(f"{POLICIES}/{v1['id']}/publish").headers["etag"]
    ok = client.post(f"{POLICIES}/{v2['id']}/publish", headers={"If-Match": etag})
    assert ok.status_code == 200 and ok.headers["etag"] != etag
    late = client.post(f"{POLICIES}/{v1['id']}/rollback", headers={"If-Match": etag})
    assert late.status_code == 412
    assert late.json()["type"] == "urn:zgate:problem:stale"
    assert client.get(f"{POLICIES}/published").json()["version"]["id"] == v2["id"]
    assert (
        client.post(f"{POLICIES}/{v1['id']}/rollback", headers={"If-Match": "*"}).status_code == 200
    )


def test_diff_lists_rules_added_removed_changed_and_moved(client: TestClient) -> None:
    v1 = create(client, V1)
    v2 = create(client, V2.replace("  - id: eng-db", "  - id: eng-db2"))
    body = client.get(f"{POLICIES}/{v1['id']}/diff/{v2['id']}").json()
    assert body["from"] == v1["id"] and body["to"] == v2["id"]
    assert body["rules"] == {
        "added": ["ssh", "eng-db2"],
        "removed": ["eng-db"],
        "changed": ["web"],
        "moved": [],
    }
    assert body["default"] == {"from": "deny", "to": "deny"}
    assert body["unified"].startswith(f"--- v{v1['id']}\n+++ v{v2['id']}\n")
    assert "-  eng: [alice, group:dba]\n+  eng: [group:dba]\n" in body["unified"]
    v3 = create(client, V2)
    moved = client.get(f"{POLICIES}/{v1['id']}/diff/{v3['id']}").json()["rules"]
    assert moved["moved"] == ["web"] and moved["changed"] == ["web"]
    assert client.get(f"{POLICIES}/{v1['id']}/diff/999").status_code == 404


def test_explain_names_the_deciding_rule(client: TestClient, database: Database) -> None:
    v1 = create(client, V1)
    url = f"{POLICIES}/{v1['id']}/explain"
    body = client.post(url, json={"client": "carol", "target": "tcp://10.1.0.5:5432"}).json()
    assert (body["verdict"], body["rule"]) == ("deny", "default")
    assert body["groups_used"] == [] and "not registered" in body["note"]
    assert body["policy_version"] == v1["id"] and body["digest"] == v1["digest"]

    given = client.post(
        url, json={"client": "carol", "groups": ["dba"], "target": "tcp://10.1.0.5:5432"}
    )
    assert (given.json()["verdict"], given.json()["rule"]) == ("allow", "eng-db")

    with database.session() as session:
        session.add(Client(id="carol", groups=["dba"], created_at=utc_now(), created_by="tests"))
    body = client.post(url, json={"client": "carol", "target": "tcp://10.1.0.5:5432"}).json()
    assert (body["verdict"], body["rule"]) == ("allow", "eng-db")
    assert body["groups_used"] == ["dba"] and body["note"] is None
    assert body["explanation"][0] == "verdict: allow (rule eng-db)"
    assert any("eng-db (allow): MATCH" in line for line in body["explanation"])

    web = client.post(url, json={"client": "dave", "target": "tcp://10.2.3.4:22"}).json()
    assert "port: tcp/22 is not allowed" in "\n".join(web["explanation"])

    bad = client.post(url, json={"client": "carol", "target": "tcp://10.1.0.5"})
    assert bad.status_code == 422
    assert bad.json()["detail"] == "'tcp://10.1.0.5': tcp needs a port from 1 to 65535"


def test_a_viewer_reads_but_cannot_change(client: TestClient, auth: Auth) -> None:
    v1 = create(client, V1)
    viewer = auth("viewer")
    for path in (POLICIES, f"{POLICIES}/{v1['id']}", f"{POLICIES}/{v1['id']}/diff/{v1['id']}"):
        assert client.get(path, headers=viewer).status_code == 200, path
    for path in (f"{POLICIES}/{v1['id']}/publish", f"{POLICIES}/{v1['id']}/rollback"):
        response = client.post(path, headers=viewer)
        assert response.status_code == 403, path
    assert client.post(POLICIES, json={"yaml": V2}, headers=viewer).status_code == 403
    explained = client.post(
        f"{POLICIES}/{v1['id']}/explain",
        json={"client": "alice", "target": "icmp://10.2.0.1"},
        headers=viewer,
    )
    assert explained.status_code == 200 and explained.json()["rule"] == "default"
    assert client.get(f"{POLICIES}/published", headers=auth("relay")).status_code == 403


def test_out_of_range_ids_and_nul_characters_are_refused(client: TestClient) -> None:
    # Both would otherwise reach PostgreSQL and fail there (integer out of range, NUL in text).
    assert client.get(f"{POLICIES}/{2**31}").status_code == 422
    assert client.post(f"{POLICIES}/0/publish").status_code == 422
    response = client.post(POLICIES, json={"yaml": V1, "comment": "a\x00b"})
    assert response.status_code == 422 and "NUL" in response.json()["detail"]
    nul_yaml = client.post(POLICIES, json={"yaml": "default: deny\x00\n"})
    assert nul_yaml.status_code == 422 and nul_yaml.json()["errors"]


def test_publications_are_counted_in_the_metrics(client: TestClient) -> None:
    v1, v2 = create(client, V1), create(client, V2)
    for path in (f"{v1['id']}/publish", f"{v2['id']}/publish", f"{v1['id']}/rollback"):
        client.post(f"{POLICIES}/{path}").raise_for_status()
    client.post(f"{POLICIES}/{v1['id']}/publish").raise_for_status()  # a no-op is not counted
    text = client.get("/metrics").text
    assert 'zgate_control_policy_publications_total{kind="publish"} 2.0' in text
    assert 'zgate_control_policy_publications_total{kind="rollback"} 1.0' in text
