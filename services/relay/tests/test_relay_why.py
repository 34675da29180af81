"""`why` on the relay: each client's last denied flows (DenialLog, recorded by the enforcer
once per denied flow) and the answer to GET /.well-known/zgate/why (answer_why): verdict,
rule, explanation and the asking client's own denials, problem documents for the rest."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest

from zgate_lab.harness import POLICY_NOW, RELAY_GATEWAY4, compile_policy, make_enforcer, tcp4, udp4
from zgate_pki import Identity
from zgate_policy.flows import FlowKey
from zgate_proto.packet import PacketView, parse_packet
from zgate_proto.session import RequestReceived
from zgate_relay.denials import DenialLog
from zgate_relay.enforce import Enforcer
from zgate_relay.fqdn import FqdnBindings
from zgate_relay.why import WHY_PATH, WhyDesk, WhyReply, answer_why

POLICY = """
default: deny
groups:
  eng: []
rules:
  - {id: eng-web, action: allow, from: ["group:eng"], to: [203.0.113.0/24], ports: [tcp/443]}
  - {id: block-db, action: deny, from: ["*"], to: [198.51.100.5/32], ports: [tcp/5432]}
  - {id: wiki, action: allow, from: ["group:eng"], to: [wiki.corp.example], ports: [tcp/443]}
"""


@dataclass
class Session:
    session_id: str
    identity: Identity


ALICE = Session("s-alice", Identity("client", "alice", "zgate.local", ("eng",), 1))
BOB = Session("s-bob", Identity("client", "bob", "zgate.local", (), 2))


def view(packet: bytes) -> PacketView:
    parsed = parse_packet(packet)
    assert parsed is not None
    return parsed


def key(dst: str, dport: int, proto: int = 6) -> FlowKey:
    src = ipaddress.ip_address("10.100.0.2").packed
    return FlowKey(proto, src, 40000, ipaddress.ip_address(dst).packed, dport)


def ask(
    target: str | None,
    identity: Identity | None = ALICE.identity,
    enforcer: Enforcer | None = None,
    *,
    method: str = "GET",
    path: str = WHY_PATH,
    now: float = 1.0,
) -> WhyReply:
    full = path if target is None else f"{path}?target={quote(target, safe='')}"
    request = RequestReceived(4, method, full, [(b":path", full.encode())])
    return answer_why(request, identity, enforcer, now)


def body(reply: WhyReply) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(reply.body)
    return decoded


# ---- the denial log ------------------------------------------------------------------------


def test_the_log_keeps_the_newest_denials_of_each_client() -> None:
    log = DenialLog(per_client=2)
    for port in (1, 2, 3):
        log.record("client/alice", POLICY_NOW, key("198.51.100.5", port), "default", ())
    log.record("client/bob", POLICY_NOW, key("198.51.100.5", 9), "default", ())
    assert [d.dport for d in log.recent("client/alice")] == [3, 2]
    assert [d.dport for d in log.recent("client/bob")] == [9]
    assert list(log.recent("client/carol")) == []


def test_the_log_forgets_the_client_denied_longest_ago_beyond_its_bound() -> None:
    log = DenialLog(max_clients=2)
    log.record("client/a", POLICY_NOW, key("198.51.100.5", 1), "r", ())
    log.record("client/b", POLICY_NOW, key("198.51.100.5", 1), "r", ())
    log.record("client/a", POLICY_NOW, key("198.51.100.5", 2), "r", ())  # a is fresh again
    log.record("client/c", POLICY_NOW, key("198.51.100.5", 1), "r", ())
    assert len(log) == 2
    assert list(log.recent("client/b")) == []
    assert [d.dport for d in log.recent("client/a")] == [2, 1]


def test_a_log_without_room_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        DenialLog(per_client=0)


def test_a_denial_reads_as_json_with_names_and_ports_where_the_protocol_has_them() -> None:
    log = DenialLog()
    log.record("c", POLICY_NOW, key("198.51.100.5", 5432), "block-db", ("db.b", "db.a"))
    log.record("c", POLICY_NOW, key("2001:db8::1", 7, proto=58), "default", ())
    icmp, tcp = (d.to_json() for d in log.recent("c"))
    assert tcp == {
        "ts": POLICY_NOW.isoformat(),
        "proto": "tcp",
        "dst": "198.51.100.5",
        "dport": 5432,
        "fqdn": "db.a",
        "rule": "block-db",
    }
    assert (icmp["proto"], icmp["dst"], icmp["dport"], icmp["fqdn"]) == (
        "icmpv6",
        "2001:db8::1",
        None,
        None,
    )


def test_the_enforcer_records_each_denied_flow_once_and_no_allowed_one() -> None:
    e = make_enforcer(compile_policy(POLICY))
    syn = tcp4("10.100.0.2", "198.51.100.5", 40000, 5432, 0x02)
    for when in (1.0, 1.1, 1.2):  # the same flow again: decided once
        assert not e.outbound(ALICE, view(syn), when).allowed
    assert e.outbound(ALICE, view(tcp4("10.100.0.2", "203.0.113.9", 40001, 443, 0x02)), 2.0).allowed
    [denial] = e.denials.recent("client/alice")
    assert (denial.rule, denial.dport) == ("block-db", 5432)


# ---- the answer ----------------------------------------------------------------------------------


def test_a_denied_target_is_explained_with_the_clients_own_denials_only() -> None:
    e = make_enforcer(compile_policy(POLICY))
    for session, sport in ((ALICE, 40000), (BOB, 40001), (ALICE, 40002)):
        syn = tcp4("10.100.0.2", "198.51.100.5", sport, 5432, 0x02)
        e.outbound(session, view(syn), 1.0)
    e.outbound(ALICE, view(udp4("10.100.0.2", "198.51.100.5", b"x", dport=5432)), 1.0)
    reply = ask("tcp://198.51.100.5:5432", enforcer=e)
    assert (reply.status, reply.result) == (200, "deny")
    assert (b"content-type", b"application/json") in reply.headers
    answer = body(reply)
    assert answer["client"] == "client/alice"
    assert answer["target"] == "tcp://198.51.100.5:5432"
    assert (answer["verdict"], answer["rule"]) == ("deny", "block-db")
    assert answer["policy_version"] == e.policy.version
    assert answer["explanation"][0] == "verdict: deny (rule block-db)"
    assert any("block-db" in line and "MATCH" in line for line in answer["explanation"])
    # Alice's two TCP flows to that port; not Bob's, not her UDP one.
    assert [d["rule"] for d in answer["recent_denials"]] == ["block-db", "block-db"]
    assert {(d["proto"], d["dport"]) for d in answer["recent_denials"]} == {("tcp", 5432)}
    assert body(ask("tcp://198.51.100.5:5432", BOB.identity, e))["client"] == "client/bob"
    assert len(body(ask("tcp://198.51.100.5:5432", BOB.identity, e))["recent_denials"]) == 1


def test_an_allowed_target_says_which_rule_allows_it() -> None:
    e = make_enforcer(compile_policy(POLICY))
    reply = ask("tcp://203.0.113.7:443", enforcer=e)
    assert (reply.result, body(reply)["rule"], body(reply)["recent_denials"]) == (
        "allow",
        "eng-web",
        [],
    )
    # Bob is not in eng: the default denies him.
    denied = body(ask("tcp://203.0.113.7:443", BOB.identity, e))
    assert (denied["verdict"], denied["rule"]) == ("deny", "default")


def test_a_name_target_is_decided_by_name_and_matches_denials_bound_to_it() -> None:
    names = FqdnBindings()
    wiki = ipaddress.ip_address("192.0.2.80").packed
    names.record("alice", "wiki.corp.example", [wiki], 300, 0.5)
    e = make_enforcer(compile_policy(POLICY), names_for=names.names_for)
    e.outbound(BOB, view(tcp4("10.100.0.3", "192.0.2.80", 40000, 443, 0x02)), 1.0)
    answer = body(ask("tcp://wiki.corp.example:443", BOB.identity, e))
    assert (answer["verdict"], answer["recent_denials"]) == ("deny", [])  # bob's had no name
    names.record("bob", "wiki.corp.example", [wiki], 300, 0.5)
    e.outbound(BOB, view(tcp4("10.100.0.3", "192.0.2.80", 40001, 443, 0x02)), 1.0)
    answer = body(ask("tcp://wiki.corp.example:443", BOB.identity, e))
    [denial] = answer["recent_denials"]
    assert (denial["fqdn"], denial["dst"]) == ("wiki.corp.example", "192.0.2.80")
    # Alice, in eng, may; by IP her bound names count, as they would for a flow.
    assert body(ask("tcp://wiki.corp.example:443", ALICE.identity, e))["rule"] == "wiki"
    by_ip = body(ask("tcp://192.0.2.80:443", ALICE.identity, e))
    assert by_ip["rule"] == "wiki" and "names: wiki.corp.example" in by_ip["explanation"]


def test_the_relays_own_dns_is_always_allowed() -> None:
    e = make_enforcer(compile_policy(POLICY))
    gateway = ipaddress.ip_address(RELAY_GATEWAY4)
    answer = body(ask(f"udp://{gateway}:53", enforcer=e))
    assert (answer["verdict"], answer["rule"]) == ("allow", "relay-dns")


def test_icmp_targets_match_icmp_denials_whatever_their_echo_id() -> None:
    e = make_enforcer(compile_policy(POLICY))
    e.denials.record("client/alice", POLICY_NOW, key("198.51.100.5", 77, proto=1), "default", ())
    answer = body(ask("icmp://198.51.100.5", enforcer=e))
    assert answer["verdict"] == "deny" and len(answer["recent_denials"]) == 1


def test_without_access_control_everything_is_allowed() -> None:
    reply = ask("tcp://198.51.100.5:5432")
    assert reply.result == "allow"
    assert body(reply)["rule"] is None


@pytest.mark.parametrize(
    ("target", "path", "method", "identity", "status", "result"),
    [
        ("tcp://db", WHY_PATH, "GET", ALICE.identity, 400, "bad_target"),
        ("ftp://db:21", WHY_PATH, "GET", ALICE.identity, 400, "bad_target"),
        (None, WHY_PATH, "GET", ALICE.identity, 400, "bad_target"),
        ("tcp://db:1", "/.well-known/zgate/other", "GET", ALICE.identity, 404, "not_found"),
        ("tcp://db:1", WHY_PATH, "POST", ALICE.identity, 405, "bad_method"),
        ("tcp://db:1", WHY_PATH, "GET", None, 403, "no_identity"),
    ],
)
def test_what_is_not_a_why_question_gets_a_problem_document(
    target: str | None,
    path: str,
    method: str,
    identity: Identity | None,
    status: int,
    result: str,
) -> None:
    reply = ask(target, identity, make_enforcer(compile_policy(POLICY)), method=method, path=path)
    assert (reply.status, reply.result) == (status, result)
    assert (b"content-type", b"application/problem+json") in reply.headers
    problem = body(reply)
    assert problem["status"] == status and problem["detail"]
    if status == 405:
        assert (b"allow", b"GET") in reply.headers


def test_two_targets_are_one_too_many() -> None:
    request = RequestReceived(4, "GET", f"{WHY_PATH}?target=tcp://a:1&target=tcp://b:2", [])
    assert answer_why(request, ALICE.identity, None, 0.0).status == 400


def test_a_country_rule_is_explained_with_the_destinations_country() -> None:
    policy = compile_policy(
        """
default: allow
rules:
  - {id: no-de, action: deny, from: ["*"], to: ["country:DE"]}
""",
        geoip=True,
    )
    e = make_enforcer(policy, country_of=lambda raw: "DE" if raw[0] == 198 else None)
    assert body(ask("tcp://198.51.100.5:443", enforcer=e))["rule"] == "no-de"
    assert body(ask("tcp://203.0.113.5:443", enforcer=e))["rule"] == "default"


def test_each_connection_asks_within_a_budget() -> None:
    class Asker:
        """Stands in for a relay connection (a bucket is kept per connection object)."""

    desk = WhyDesk(rate=1.0, burst=2.0)
    one, other = Asker(), Asker()
    request = RequestReceived(4, "GET", f"{WHY_PATH}?target=tcp://db:1", [])

    def status(asker: Asker, now: float) -> int:
        return desk.answer(asker, request, ALICE.identity, None, now).status

    assert [status(one, 10.0), status(one, 10.0)] == [200, 200]
    refused = desk.answer(one, request, ALICE.identity, None, 10.1)
    assert (refused.status, refused.result) == (429, "rate_limited")
    assert (b"retry-after", b"1") in refused.headers
    assert status(other, 10.1) == 200  # another connection's budget is its own
    assert status(one, 11.2) == 200  # a second later, one more


def test_rules_for_other_clients_are_left_out_of_the_explanation() -> None:
    policy = compile_policy("""
default: deny
groups:
  dba: []
rules:
  - {id: dave-db, action: allow, from: [dave, "group:dba"], to: [198.51.100.5/32]}
  - {id: web, action: allow, from: ["*"], to: [203.0.113.0/24], ports: [tcp/443]}
""")
    answer = body(ask("tcp://198.51.100.5:5432", enforcer=make_enforcer(policy)))
    text = "\n".join(answer["explanation"])
    assert "dave" not in text and "dba" not in text
    assert answer["explanation"][2] == "  (1 rule for other clients left out)"
    assert any(
        line.startswith("  web (allow): no match: destination") for line in answer["explanation"]
    )
    assert answer["explanation"][-1] == "  default (deny): no rule matched"
