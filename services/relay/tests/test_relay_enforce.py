"""The enforcer on the packet path: flows decided once, replies only, ICMP prohibited with a
budget, DNS to the relay always allowed, GeoIP and FQDN inputs, policy swaps."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

import pytest

from zgate_lab.harness import ENG_WEB_POLICY as POLICY
from zgate_lab.harness import POLICY_NOW, RELAY_GATEWAY4, tcp4, udp4
from zgate_lab.harness import compile_policy as compiled
from zgate_lab.harness import geoip_country as country
from zgate_lab.harness import make_enforcer as enforcer
from zgate_lab.harness import write_geoip_db as write_db
from zgate_pki import Identity
from zgate_policy import PolicyInvalid
from zgate_proto.ip import parse_packet
from zgate_proto.packet import PacketView
from zgate_proto.packet import parse_packet as parse_view
from zgate_relay.enforce import RELAY_DNS_RULE, IcmpBudget
from zgate_relay.fqdn import FqdnBindings
from zgate_relay.geoip import GeoIP

NOW = POLICY_NOW
GATEWAY = RELAY_GATEWAY4


@dataclass
class Session:
    session_id: str
    identity: Identity


def view(packet: bytes) -> PacketView:
    """The router's view of a packet, which the enforcer takes."""
    parsed = parse_view(packet)
    assert parsed is not None
    return parsed


ALICE = Session("s-alice", Identity("client", "alice", "zgate.local", ("eng",), 1))
BOB = Session("s-bob", Identity("client", "bob", "zgate.local", (), 2))


def test_first_packet_decides_and_replies_pass_only_for_allowed_flows() -> None:
    e = enforcer(compiled(POLICY))
    syn = tcp4("10.100.0.2", "203.0.113.10", 40000, 443, 0x02)
    assert e.outbound(ALICE, view(syn), 1.0).allowed
    assert len(e.flows) == 1
    reply = tcp4("203.0.113.10", "10.100.0.2", 443, 40000, 0x12)
    assert e.inbound(ALICE, view(reply), 1.1).allowed
    # An unsolicited packet towards the agent, or a reply delivered to another session.
    assert (
        e.inbound(ALICE, view(tcp4("203.0.113.10", "10.100.0.2", 443, 40001, 0x12)), 1.2).reason
        == "no_flow"
    )
    assert e.inbound(BOB, view(reply), 1.2).reason == "no_flow"
    events = e.take_events()
    assert [ev.event for ev in events] == ["flow.allow"]
    record = events[0].to_dict()
    assert (record["client"], record["rule"], record["dport"]) == ("client/alice", "eng-web", 443)


def test_denied_flow_is_decided_once_and_answered_with_icmp_within_a_budget() -> None:
    decisions: list[str] = []
    e = enforcer(
        compiled(POLICY),
        icmp_budget=IcmpBudget(rate=1.0, burst=2.0),
        on_decision=lambda d: decisions.append(f"{d.rule_id}/{d.verdict}"),
    )
    packet = udp4("10.100.0.3", "203.0.113.10", b"x", dport=53)
    verdicts = [e.outbound(BOB, view(packet), 5.0) for _ in range(4)]
    assert all(not v.allowed and v.reason == "policy_denied" for v in verdicts)
    assert [v.icmp is not None for v in verdicts] == [True, True, False, False]
    icmp = parse_packet(verdicts[0].icmp)  # type: ignore[arg-type]
    assert (icmp.proto, icmp.icmp_type, icmp.icmp_code) == (1, 3, 13)
    assert icmp.src == GATEWAY
    assert decisions == ["default/deny"]  # one decision for the flow, not one per packet
    assert [ev.event for ev in e.take_events()] == ["flow.deny"]
    # The budget refills with time.
    assert e.outbound(BOB, view(packet), 6.5).icmp is not None


def test_dns_to_the_relay_is_allowed_whatever_the_policy() -> None:
    e = enforcer(compiled("default: deny\n"))
    query = udp4("10.100.0.3", "10.100.0.1", b"q", dport=53)
    assert e.outbound(BOB, view(query), 1.0).allowed
    assert e.take_events()[0].to_dict()["rule"] == RELAY_DNS_RULE
    assert not e.outbound(BOB, view(udp4("10.100.0.3", "10.100.0.1", b"q", dport=54)), 1.0).allowed


def test_fqdn_rule_uses_the_clients_own_dns_answers() -> None:
    fqdns = FqdnBindings()
    policy = compiled("""
rules:
  - {id: wiki, action: allow, from: [alice, bob], to: ["*.corp.example"]}
""")
    e = enforcer(policy, names_for=fqdns.names_for)
    fqdns.record("alice", "wiki.corp.example", [ipaddress.ip_address("203.0.113.7")], 60, 0.0)
    to_wiki = udp4("10.100.0.2", "203.0.113.7", b"x", dport=80)
    assert e.outbound(ALICE, view(to_wiki), 1.0).allowed
    assert e.take_events()[0].to_dict()["fqdn"] == "wiki.corp.example"
    assert not e.outbound(BOB, view(udp4("10.100.0.3", "203.0.113.7", b"x", dport=80)), 1.0).allowed


def test_country_rule_with_a_geoip_database(tmp_path: Path) -> None:
    db = write_db(
        tmp_path / "geo.mmdb", {"203.0.113.0/25": country("DE"), "203.0.113.128/25": country("FR")}
    )
    text = """
rules:
  - {id: no-fr, action: deny, from: ["*"], to: ["country:FR"]}
  - {id: rest, action: allow, from: ["*"], to: [0.0.0.0/0]}
"""
    with pytest.raises(PolicyInvalid, match="GeoIP"):
        compiled(text)  # refused without a database
    geo = GeoIP(db)
    try:
        e = enforcer(compiled(text, geoip=True), country_of=geo.country)
        assert e.outbound(ALICE, view(udp4("10.100.0.2", "203.0.113.10", b"x")), 1.0).allowed
        assert not e.outbound(ALICE, view(udp4("10.100.0.2", "203.0.113.200", b"x")), 1.0).allowed
        rules = [ev.to_dict()["rule"] for ev in e.take_events()]
        assert rules == ["rest", "no-fr"]
    finally:
        geo.close()


def test_policy_swap_ends_flows_the_new_policy_denies() -> None:
    e = enforcer(compiled(POLICY))
    syn = tcp4("10.100.0.2", "203.0.113.10", 40000, 443, 0x02)
    assert e.outbound(ALICE, view(syn), 1.0).allowed
    e.take_events()
    ended = e.set_policy(compiled("default: deny\n"), 1.5)
    assert ended == 1
    end = e.take_events()[0].to_dict()
    assert (end["event"], end["reason"]) == ("flow.end", "policy_revoked")
    # The next packet of that flow is decided again, by the new policy.
    assert (
        e.outbound(ALICE, view(tcp4("10.100.0.2", "203.0.113.10", 40000, 443, 0x10)), 2.0).reason
        == "policy_denied"
    )


def test_session_end_ends_its_flows_with_records() -> None:
    e = enforcer(compiled(POLICY))
    e.outbound(ALICE, view(tcp4("10.100.0.2", "203.0.113.10", 40000, 443, 0x02)), 1.0)
    e.take_events()
    assert e.end_session(ALICE) == 1
    end = e.take_events()[0].to_dict()
    assert (end["reason"], end["client"], end["packets_out"]) == (
        "session_closed",
        "client/alice",
        1,
    )
    assert len(e.flows) == 0
