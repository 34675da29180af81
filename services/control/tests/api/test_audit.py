"""The audit trail: relays post chained records; the chain is checked, stored, queried,
exported and verified again (on SQLite and PostgreSQL)."""

from __future__ import annotations

import csv
import io
import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import delete, select

from zgate_control.db import Database
from zgate_control.models import AuditRecord, Relay
from zgate_policy.chain import GENESIS, Chainer, record_hash, verify_lines, verify_records

Auth = Callable[..., dict[str, str]]

START = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def flows(
    relay: str, count: int, *, chainer: Chainer | None = None, **fields: Any
) -> list[dict[str, Any]]:
    """`count` chained flow records of `relay`, one second apart."""
    chainer = chainer or Chainer.new()
    records = []
    for n in range(count):
        verdict = "deny" if n % 3 == 2 else "allow"
        record: dict[str, Any] = {
            "ts": (START + timedelta(seconds=n))
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "event": f"flow.{verdict}",
            "relay": relay,
            "client": f"client-{n % 2}",
            "session": "s1",
            "proto": "tcp",
            "src": "100.64.0.2",
            "sport": 40000 + n,
            "dst": f"10.0.0.{n % 4}",
            "dport": 443,
            "fqdn": "db.example" if n % 4 == 0 else None,
            "verdict": verdict,
            "rule": f"r{n % 5}",
            "policy_version": "abc123",
            "connector": None,
        }
        record.update(fields)
        records.append(chainer.link(record))
    return records


def post(
    client: TestClient, relay: str, records: list[dict[str, Any]], **kw: Any
) -> dict[str, Any]:
    response = client.post(f"/api/v1/relays/{relay}/audit", json={"records": records}, **kw)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_a_chained_batch_is_accepted_then_all_duplicates(
    client: TestClient, database: Database
) -> None:
    records = flows("r1", 10)
    assert post(client, "r1", records) == {
        "accepted": 10,
        "duplicates": 0,
        "broken": [],
        "last_seq": 10,
    }
    assert post(client, "r1", records) == {
        "accepted": 0,
        "duplicates": 10,
        "broken": [],
        "last_seq": 10,
    }
    with database.reader() as session:
        relay = session.get(Relay, "r1")
        assert relay is not None  # created by the audit batch (no heartbeat yet)
        assert (relay.audit_chain, relay.audit_seq, relay.audit_hash) == (
            records[0]["chain"],
            10,
            records[-1]["hash"],
        )
        rows = session.scalars(select(AuditRecord).order_by(AuditRecord.seq)).all()
    assert [r.seq for r in rows] == list(range(1, 11))
    assert all(r.chain_ok for r in rows)
    assert rows[0].ts == START and rows[0].dport == 443 and rows[0].fqdn == "db.example"
    assert rows[3].record == records[3]
    metrics = client.get("/metrics").text
    assert 'zgate_control_audit_records_total{outcome="stored"} 10.0' in metrics
    assert 'zgate_control_audit_records_total{outcome="duplicate"} 10.0' in metrics


def test_the_chain_continues_across_batches_and_a_gap_is_reported(client: TestClient) -> None:
    records = flows("r1", 12)
    assert post(client, "r1", records[:5])["broken"] == []
    # seq 7 is missing: seq 8 is stored but reported, and 9.. link to 8 again.
    answer = post(client, "r1", records[5:6] + records[7:])
    assert answer["accepted"] == 6 and answer["last_seq"] == 12
    assert len(answer["broken"]) == 1
    broken = answer["broken"][0]
    assert (broken["seq"], broken["id"]) == (8, records[7]["id"])
    assert broken["problem"].startswith("deleted: seq jumps from 6 to 8")
    items = client.get("/api/v1/audit", params={"limit": 500}).json()["items"]
    assert {i["seq"]: i["chain_ok"] for i in items if not i["chain_ok"]} == {8: False}
    assert 'outcome="chain_broken"} 1.0' in client.get("/metrics").text


def test_an_altered_record_is_broken(client: TestClient) -> None:
    records = flows("r1", 3)
    records[1] = {**records[1], "verdict": "allow", "dport": 22}
    answer = post(client, "r1", records)
    assert answer["accepted"] == 3
    assert [(b["seq"], b["problem"]) for b in answer["broken"]] == [
        (2, "altered: the hash does not match the record's content")
    ]


def test_a_record_of_another_relay_is_refused(client: TestClient, database: Database) -> None:
    records = flows("r2", 2)
    answer = post(client, "r1", records)
    assert answer["accepted"] == 0
    assert [b["problem"][:27] for b in answer["broken"]] == ["not stored: relay mismatch:"] * 2
    with database.reader() as session:
        assert session.scalars(select(AuditRecord)).all() == []
    assert 'outcome="rejected"} 2.0' in client.get("/metrics").text


def test_unchained_or_undated_records_are_refused_one_by_one(client: TestClient) -> None:
    good = flows("r1", 2)
    no_ts = flows("r1", 1, ts="yesterday")[0]
    unchained = {"ts": good[0]["ts"], "event": "flow.allow", "relay": "r1"}
    answer = post(client, "r1", [good[0], unchained, no_ts, good[1]])
    assert answer["accepted"] == 2
    problems = [b["problem"] for b in answer["broken"]]
    assert problems[0].startswith("not stored: unchained record: no id")
    assert problems[1].startswith("not stored: bad ts 'yesterday'")


def test_values_postgresql_cannot_hold_are_refused_on_both_databases(client: TestClient) -> None:
    nul = flows("r1", 1, detail="a\x00b")[0]
    nan = flows("r1", 1, duration_s=float("nan"))[0]
    huge = flows("r1", 1, bytes_out=1e16)[0]
    fine = flows("r1", 1, detail="NaN and Infinity, \\u0000 as text", small=1e-7, big=1e15)[0]
    # httpx refuses to send NaN; a relay's own encoder might not.
    content = json.dumps({"records": [nul, nan, huge, fine]})
    response = client.post(
        "/api/v1/relays/r1/audit", content=content, headers={"Content-Type": "application/json"}
    )
    answer = response.json()
    assert answer["accepted"] == 1
    assert [
        b["id"] for b in answer["broken"] if b["problem"].startswith("not stored: unstorable")
    ] == [
        nul["id"],
        nan["id"],
        huge["id"],
    ]
    (stored,) = client.get("/api/v1/audit").json()["items"]
    assert stored.pop("chain_ok") is True
    assert stored["small"] == 1e-7 and record_hash(stored) == fine["hash"]


def test_a_new_chain_switches_the_head(client: TestClient, database: Database) -> None:
    old = flows("r1", 4)
    post(client, "r1", old)
    new = flows("r1", 3)
    assert new[0]["seq"] == 1 and new[0]["prev"] == GENESIS
    assert post(client, "r1", new[:2]) == {
        "accepted": 2,
        "duplicates": 0,
        "broken": [],
        "last_seq": 2,
    }
    assert post(client, "r1", new[2:])["broken"] == []
    # A late record of the old chain still links to the old chain's last stored record.
    assert post(client, "r1", flows("r1", 1, chainer=Chainer.resume(old[-1])))["broken"] == []
    with database.reader() as session:
        relay = session.get(Relay, "r1")
        assert relay is not None and (relay.audit_chain, relay.audit_seq) == (new[0]["chain"], 3)
    # A chain whose start never arrived is stored, reported.
    late = flows("r1", 5)[3:]
    answer = post(client, "r1", late)
    assert answer["broken"][0]["problem"].startswith(
        "deleted: the chain's first record here is seq 4"
    )
    assert len(answer["broken"]) == 1


def test_relay_tokens_are_bound_to_their_relay_and_viewers_cannot_post(
    client: TestClient, auth: Auth
) -> None:
    body = {"records": flows("r2", 1)}
    refused = client.post("/api/v1/relays/r2/audit", json=body, headers=auth("relay", "r1"))
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/problem+json"
    assert (
        client.post("/api/v1/relays/r2/audit", json=body, headers=auth("viewer")).status_code == 403
    )
    assert (
        client.post("/api/v1/relays/r2/audit", json=body, headers=auth("operator")).status_code
        == 403
    )
    assert (
        client.post("/api/v1/relays/r2/audit", json=body, headers=auth("relay", "r2")).status_code
        == 200
    )
    assert client.get("/api/v1/audit", headers=auth("relay", "r2")).status_code == 403
    assert client.get("/api/v1/audit", headers=auth("viewer")).status_code == 200


def test_batches_over_the_limits_are_refused(client: TestClient) -> None:
    many = client.post("/api/v1/relays/r1/audit", json={"records": [{}] * 1001})
    assert many.status_code == 422 and many.json()["type"] == "urn:zgate:problem:invalid"
    huge = flows("r1", 1, detail="x" * (4 * 1024 * 1024))
    big = client.post("/api/v1/relays/r1/audit", json={"records": huge})
    assert big.status_code == 413
    assert big.json()["type"] == "urn:zgate:problem:too-large"


def test_query_filters_and_pagination(client: TestClient, auth: Auth) -> None:
    post(client, "r1", flows("r1", 30))
    post(client, "r2", flows("r2", 6, client="carol"))
    viewer = auth("viewer")

    def query(**params: Any) -> list[dict[str, Any]]:
        response = client.get("/api/v1/audit", params={"limit": 500, **params}, headers=viewer)
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    everything = query()
    assert len(everything) == 36
    keys = [(i["ts"], i["id"]) for i in everything]
    assert keys == sorted(keys, reverse=True)  # newest first
    assert all(i["chain_ok"] is True for i in everything)
    assert {i["client"] for i in query(client="client-1")} == {"client-1"}
    assert len(query(client="client-1")) == 15
    assert len(query(client="carol")) == 6 and {i["relay"] for i in query(relay="r2")} == {"r2"}
    denied = query(verdict="deny")
    assert denied and {i["event"] for i in denied} == {"flow.deny"}
    assert len(query(event="flow.deny")) == len(denied)
    assert {i["dst"] for i in query(dst="10.0.0.3")} == {"10.0.0.3"}
    assert {i["fqdn"] for i in query(dst="db.example")} == {"db.example"}
    assert len(query(rule="r4")) == 7
    assert query(session="nope") == []
    window = query(since="2026-12-01T10:00:10Z", until="2026-12-01T10:00:20Z", relay="r1")
    assert sorted(i["seq"] for i in window) == list(range(11, 21))
    # Pages of 7 walk the same order without gaps or repeats (ts ties between relays too).
    seen: list[tuple[str, str]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 7}
        if cursor:
            params["cursor"] = cursor
        body = client.get("/api/v1/audit", params=params, headers=viewer).json()
        seen.extend((i["ts"], i["id"]) for i in body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == keys
    assert client.get("/api/v1/audit", params={"cursor": "!!"}).status_code == 400
    assert client.get("/api/v1/audit", params={"verdict": "maybe"}).status_code == 422
    # Relays record the identity (client/<id>); the API finds it by the bare id as well.
    post(client, "r3", flows("r3", 2, client="client/dora"))
    assert len(query(client="dora")) == 2 == len(query(client="client/dora"))
    assert {i["client"] for i in query(client="dora")} == {"client/dora"}  # as shipped


def test_export_jsonl_verifies_and_csv_has_its_header(client: TestClient, auth: Auth) -> None:
    shipped = flows("r1", 20, duration_s=1.25, big=2**53 + 1, whole=3.0, text="naïve ☃")
    post(client, "r1", shipped)
    post(client, "r2", flows("r2", 5))
    response = client.get(
        "/api/v1/audit/export", params={"format": "jsonl"}, headers=auth("viewer")
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    assert response.headers["content-disposition"].startswith('attachment; filename="zgate-audit-')
    lines = response.text.splitlines()
    assert len(lines) == 25
    report = verify_lines(lines)
    assert report.ok and [(g.relay, g.records) for g in report.groups] == [("r1", 20), ("r2", 5)]
    exported = [json.loads(line) for line in lines[:20]]
    assert exported == shipped  # values survive the database: same record, same hash
    assert verify_records(enumerate((json.loads(line) for line in lines), 1)).ok
    assert all(record_hash(r) == r["hash"] for r in exported)
    assert isinstance(exported[0]["whole"], float) and isinstance(exported[0]["big"], int)

    denied = client.get("/api/v1/audit/export", params={"format": "jsonl", "verdict": "deny"})
    assert all(json.loads(line)["verdict"] == "deny" for line in denied.text.splitlines())
    table = client.get("/api/v1/audit/export", params={"format": "csv", "relay": "r1"})
    assert table.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(table.text)))
    assert rows[0][:5] == ["id", "relay", "chain", "seq", "ts"] and rows[0][-1] == "chain_ok"
    assert len(rows) == 21
    assert rows[1][rows[0].index("seq")] == "1" and rows[1][-1] == "true"
    assert client.get("/api/v1/audit/export", params={"format": "xml"}).status_code == 422


def test_export_streams_across_batches(client: TestClient, database: Database) -> None:
    from zgate_control.services.audit import AuditFilter, export_chunks

    post(client, "r1", flows("r1", 23))
    chunks = list(export_chunks(database, AuditFilter(), "jsonl", batch=5))
    assert len(chunks) == 5  # 5+5+5+5+3, each from its own query
    assert verify_lines("".join(chunks).splitlines()).ok


def test_verify_reports_a_record_deleted_in_the_database(
    client: TestClient, database: Database, auth: Auth
) -> None:
    records = flows("r1", 10)
    post(client, "r1", records)
    post(client, "r2", flows("r2", 3))
    clean = client.get("/api/v1/audit/verify", headers=auth("viewer")).json()["relays"]
    assert [(c["relay"], c["records"], c["ok"], c["first_seq"], c["last_seq"]) for c in clean] == [
        ("r1", 10, True, 1, 10),
        ("r2", 3, True, 1, 3),
    ]
    with database.session() as session:
        session.execute(delete(AuditRecord).where(AuditRecord.id == records[4]["id"]))
    (chain,) = client.get("/api/v1/audit/verify", params={"relay": "r1"}).json()["relays"]
    assert chain["ok"] is False and chain["records"] == 9
    (problem,) = chain["problems"]
    assert (problem["position"], problem["seq"], problem["id"]) == (5, 6, records[5]["id"])
    assert problem["problem"].startswith("deleted: seq jumps from 4 to 6")


def test_verify_notices_records_cut_off_at_the_end(client: TestClient, database: Database) -> None:
    records = flows("r1", 5)
    post(client, "r1", records)
    with database.session() as session:
        session.execute(delete(AuditRecord).where(AuditRecord.seq == 5))
    (chain,) = client.get("/api/v1/audit/verify").json()["relays"]
    assert chain["ok"] is False
    assert chain["problems"][0]["problem"].startswith("truncated: the relay's chain reached seq 5")


def test_two_processes_posting_the_same_batch_store_it_once(database: Database) -> None:
    from zgate_control.services.audit import ingest

    other = Database(str(database.url.render_as_string(hide_password=False)))
    records = flows("r1", 200)
    barrier = threading.Barrier(2)
    answers: list[tuple[int, int, int]] = []

    def post_once(db: Database) -> None:
        barrier.wait(timeout=10)
        with db.session() as session:
            result = ingest(session, "r1", records, datetime.now(UTC))
        answers.append((result.accepted, result.duplicates, len(result.broken)))

    try:
        threads = [threading.Thread(target=post_once, args=(db,)) for db in (database, other)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        other.dispose()
    assert sorted(answers) == [(0, 200, 0), (200, 0, 0)]
    with database.reader() as session:
        assert len(session.scalars(select(AuditRecord.id)).all()) == 200
