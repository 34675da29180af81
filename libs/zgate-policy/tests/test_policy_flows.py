"""The flow table: keys from real packets (both directions, ICMP echo and errors, v4 and
v6), TCP state from flags, idle timeouts on a fake clock, bounds, amortized expiry,
session end and revalidation after a policy change."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zgate_policy.flows import (
    END_REASONS,
    TCP_CLOSING,
    TCP_ESTABLISHED,
    TCP_SYN,
    Flow,
    FlowKey,
    FlowTable,
    Timeouts,
    flow_key_from_info,
    flow_key_from_packet,
    reply_key_from_info,
    reply_key_from_packet,
    tcp_flags,
)
from zgate_proto.errors import PacketError
from zgate_proto.icmp import admin_prohibited, destination_unreachable, packet_too_big
from zgate_proto.ip import internet_checksum, parse_packet

AGENT4 = IPv4Address("100.64.0.2")
WORLD4 = IPv4Address("203.0.113.9")
ROUTER4 = IPv4Address("198.51.100.1")
AGENT6 = IPv6Address("2001:db8:100::2")
WORLD6 = IPv6Address("2001:db8:1::9")
ROUTER6 = IPv6Address("2001:db8:ff::1")

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


# --- packet builders ---------------------------------------------------------------------


def ipv4(
    src: IPv4Address, dst: IPv4Address, proto: int, payload: bytes, frag: int = 0x4000
) -> bytes:
    header = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            20 + len(payload),
            7,
            frag,
            64,
            proto,
            0,
            src.packed,
            dst.packed,
        )
    )
    header[10:12] = internet_checksum(header).to_bytes(2, "big")
    return bytes(header) + payload


def ipv6(src: IPv6Address, dst: IPv6Address, next_header: int, payload: bytes) -> bytes:
    return (
        struct.pack("!IHBB", 6 << 28, len(payload), next_header, 64)
        + src.packed
        + dst.packed
        + payload
    )


def tcp(sport: int, dport: int, flags: int, data: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 0x50, flags, 65535, 0, 0) + data


def udp(sport: int, dport: int, data: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


def echo(kind: int, ident: int, seq: int = 1) -> bytes:
    return struct.pack("!BBHHH", kind, 0, 0, ident, seq) + b"ping"


def ip(
    src: IPv4Address | IPv6Address, dst: IPv4Address | IPv6Address, proto: int, payload: bytes
) -> bytes:
    if isinstance(src, IPv4Address) and isinstance(dst, IPv4Address):
        return ipv4(src, dst, proto, payload)
    assert isinstance(src, IPv6Address) and isinstance(dst, IPv6Address)
    return ipv6(src, dst, proto, payload)


BOTH = pytest.mark.parametrize(
    ("agent", "world", "router"),
    [(AGENT4, WORLD4, ROUTER4), (AGENT6, WORLD6, ROUTER6)],
    ids=["v4", "v6"],
)


def icmp_proto(address: IPv4Address | IPv6Address) -> int:
    return 1 if address.version == 4 else 58


def echo_types(address: IPv4Address | IPv6Address) -> tuple[int, int]:
    return (8, 0) if address.version == 4 else (128, 129)


# --- keys ----------------------------------------------------------------------------------


@BOTH
@pytest.mark.parametrize("proto", [6, 17])
def test_request_and_reply_share_a_key(
    agent: IPv4Address | IPv6Address, world: IPv4Address | IPv6Address, router: object, proto: int
) -> None:
    out = tcp(40000, 443, SYN) if proto == 6 else udp(40000, 53, b"query")
    back = tcp(443, 40000, SYN | ACK) if proto == 6 else udp(53, 40000, b"answer")
    key = flow_key_from_packet(ip(agent, world, proto, out))
    assert key == FlowKey(proto, agent.packed, 40000, world.packed, 443 if proto == 6 else 53)
    assert reply_key_from_packet(ip(world, agent, proto, back)) == key
    # The reply of some other flow does not match it.
    assert (
        reply_key_from_packet(
            ip(world, agent, proto, udp(53, 40001) if proto == 17 else tcp(443, 40001, ACK))
        )
        != key
    )


@BOTH
def test_echo_identifier_is_both_ports(
    agent: IPv4Address | IPv6Address, world: IPv4Address | IPv6Address, router: object
) -> None:
    request, reply = echo_types(agent)
    proto = icmp_proto(agent)
    key = flow_key_from_packet(ip(agent, world, proto, echo(request, 0x1234)))
    assert key == FlowKey(proto, agent.packed, 0x1234, world.packed, 0x1234)
    assert reply_key_from_packet(ip(world, agent, proto, echo(reply, 0x1234, seq=9))) == key
    assert reply_key_from_packet(ip(world, agent, proto, echo(reply, 0x1235))) != key
    # A ping from the world towards the agent is not a reply to the agent's ping.
    assert reply_key_from_packet(ip(world, agent, proto, echo(request, 0x1234))) != key


@BOTH
@pytest.mark.parametrize("inner", ["tcp", "udp", "echo"])
def test_error_towards_agent_belongs_to_the_quoted_flow(
    agent: IPv4Address | IPv6Address,
    world: IPv4Address | IPv6Address,
    router: IPv4Address | IPv6Address,
    inner: str,
) -> None:
    proto = {"tcp": 6, "udp": 17, "echo": icmp_proto(agent)}[inner]
    payload = {
        "tcp": tcp(40000, 443, SYN),
        "udp": udp(40000, 5000, bytes(1400)),  # long: the quote is cut short
        "echo": echo(echo_types(agent)[0], 77),
    }[inner]
    original = ip(agent, world, proto, payload)
    key = flow_key_from_packet(original)
    assert key is not None
    unreachable = admin_prohibited(original, router)
    assert unreachable is not None
    if inner == "udp":
        assert len(unreachable) < len(original)
    assert reply_key_from_packet(unreachable) == key
    if agent.version == 6:
        too_big = packet_too_big(original, router, 1280)
        assert too_big is not None
        assert reply_key_from_packet(too_big) == key


@BOTH
def test_error_from_agent_belongs_to_its_flow(
    agent: IPv4Address | IPv6Address, world: IPv4Address | IPv6Address, router: object
) -> None:
    """The agent answers a UDP reply with port unreachable: same flow as its request."""
    request = ip(agent, world, 17, udp(40000, 53))
    answer = ip(world, agent, 17, udp(53, 40000, b"late answer"))
    error = destination_unreachable(answer, agent, 3 if agent.version == 4 else 4)
    assert error is not None
    assert flow_key_from_packet(error) == flow_key_from_packet(request)
    # An error from the agent about an echo reply it got belongs to its echo flow.
    request_type, reply_type = echo_types(agent)
    ping = ip(agent, world, icmp_proto(agent), echo(request_type, 5))
    pong = ip(world, agent, icmp_proto(agent), echo(reply_type, 5))
    error = destination_unreachable(pong, agent, 3 if agent.version == 4 else 4)
    assert error is not None
    assert flow_key_from_packet(error) == flow_key_from_packet(ping)


@BOTH
def test_error_about_someone_elses_packet_has_no_key(
    agent: IPv4Address | IPv6Address,
    world: IPv4Address | IPv6Address,
    router: IPv4Address | IPv6Address,
) -> None:
    other = ip_address(int(agent) + 1)
    original = ip(other, world, 17, udp(40000, 53))
    error = admin_prohibited(original, router)
    assert error is not None
    # Re-address the error to our agent, as a spoofer would.
    forged = bytearray(error)
    if agent.version == 4:
        forged[16:20] = agent.packed
    else:
        forged[24:40] = agent.packed
    assert reply_key_from_packet(bytes(forged)) is None
    assert reply_key_from_packet(error) == flow_key_from_packet(original)


@BOTH
def test_errors_about_errors_and_bad_quotes_have_no_key(
    agent: IPv4Address | IPv6Address,
    world: IPv4Address | IPv6Address,
    router: IPv4Address | IPv6Address,
) -> None:
    proto = icmp_proto(agent)
    error_type = 3 if agent.version == 4 else 1
    original = ip(agent, world, 17, udp(40000, 53))
    inner_error = ip(agent, world, proto, struct.pack("!BBHI", error_type, 1, 0, 0) + original)
    nested = ip(router, agent, proto, struct.pack("!BBHI", error_type, 1, 0, 0) + inner_error)
    assert reply_key_from_packet(nested) is None
    # A quote cut inside its IP header, or before the ports, has no key either.
    for cut in (10, 20 if agent.version == 4 else 40, (20 if agent.version == 4 else 40) + 2):
        short = ip(router, agent, proto, struct.pack("!BBHI", error_type, 1, 0, 0) + original[:cut])
        assert reply_key_from_packet(short) is None
    # A quote of the wrong IP version.
    other = (
        ip(WORLD4, AGENT4, 17, udp(1, 2))
        if agent.version == 6
        else ip(WORLD6, AGENT6, 17, udp(1, 2))
    )
    assert (
        reply_key_from_packet(
            ip(router, agent, proto, struct.pack("!BBHI", error_type, 1, 0, 0) + other)
        )
        is None
    )


def test_quoted_ipv6_extension_headers_and_fragments() -> None:
    # Destination options (8 bytes) then UDP.
    inner = ipv6(AGENT6, WORLD6, 60, bytes([17, 0]) + bytes(6) + udp(40000, 53))
    error = admin_prohibited(inner, ROUTER6)
    assert error is not None
    assert reply_key_from_packet(error) == FlowKey(17, AGENT6.packed, 40000, WORLD6.packed, 53)
    assert flow_key_from_packet(inner) == FlowKey(17, AGENT6.packed, 40000, WORLD6.packed, 53)
    # A quoted later fragment carries no ports: the key has ports 0 (built by hand: the
    # ICMP builders refuse to answer later fragments).
    fragment = ipv6(AGENT6, WORLD6, 44, struct.pack("!BBHI", 17, 0, 8 << 3, 1) + bytes(16))
    error = ipv6(ROUTER6, AGENT6, 58, struct.pack("!BBHI", 1, 1, 0, 0) + fragment)
    assert reply_key_from_packet(error) == FlowKey(17, AGENT6.packed, 0, WORLD6.packed, 0)


@BOTH
def test_other_protocols_and_icmp_types_have_ports_zero(
    agent: IPv4Address | IPv6Address, world: IPv4Address | IPv6Address, router: object
) -> None:
    gre = flow_key_from_packet(ip(agent, world, 47, bytes(8)))
    assert gre == FlowKey(47, agent.packed, 0, world.packed, 0)
    assert reply_key_from_packet(ip(world, agent, 47, bytes(8))) == gre
    other_icmp = 13 if agent.version == 4 else 130  # timestamp / multicast listener query
    key = flow_key_from_packet(
        ip(agent, world, icmp_proto(agent), struct.pack("!BBHI", other_icmp, 0, 0, 0))
    )
    assert key == FlowKey(icmp_proto(agent), agent.packed, 0, world.packed, 0)


def test_fragments_without_ports_get_ports_zero() -> None:
    payload = udp(40000, 53, bytes(32))
    first = ipv4(AGENT4, WORLD4, 17, payload, frag=0x2000)  # more fragments, offset 0
    later = ipv4(AGENT4, WORLD4, 17, bytes(range(1, 25)), frag=0x0004)  # offset 32
    assert flow_key_from_packet(first) == FlowKey(17, AGENT4.packed, 40000, WORLD4.packed, 53)
    assert flow_key_from_packet(later) == FlowKey(17, AGENT4.packed, 0, WORLD4.packed, 0)
    assert reply_key_from_packet(
        ipv4(WORLD4, AGENT4, 17, bytes(range(1, 25)), frag=0x0004)
    ) == FlowKey(17, AGENT4.packed, 0, WORLD4.packed, 0)
    later6 = ipv6(AGENT6, WORLD6, 44, struct.pack("!BBHI", 6, 0, (8 << 3) | 1, 9) + bytes(16))
    assert flow_key_from_packet(later6) == FlowKey(6, AGENT6.packed, 0, WORLD6.packed, 0)


def test_malformed_packets_have_no_key() -> None:
    good = ipv4(AGENT4, WORLD4, 6, tcp(1, 2, SYN))
    for bad in (b"", b"\x45", good[:-1], b"\x75" + good[1:], good[:30]):
        assert flow_key_from_packet(bad) is None
        assert reply_key_from_packet(bad) is None
        assert tcp_flags(bad) is None
    # An echo request too short for its identifier.
    assert flow_key_from_packet(ipv4(AGENT4, WORLD4, 1, struct.pack("!BBH", 8, 0, 0))) is None


def test_tcp_flags() -> None:
    assert tcp_flags(ipv4(AGENT4, WORLD4, 6, tcp(1, 2, SYN | ACK))) == SYN | ACK
    assert tcp_flags(ipv6(AGENT6, WORLD6, 6, tcp(1, 2, FIN | ACK))) == FIN | ACK
    with_options = ipv6(AGENT6, WORLD6, 60, bytes([6, 0]) + bytes(6) + tcp(1, 2, RST))
    assert tcp_flags(with_options) == RST
    assert tcp_flags(ipv4(AGENT4, WORLD4, 17, udp(1, 2))) is None
    error = admin_prohibited(ipv4(AGENT4, WORLD4, 6, tcp(1, 2, SYN)), ROUTER4)
    assert error is not None and tcp_flags(error) is None


def test_info_variants_match() -> None:
    packet = ipv6(AGENT6, WORLD6, 6, tcp(40000, 22, SYN))
    info = parse_packet(packet)
    assert flow_key_from_info(info, packet) == flow_key_from_packet(packet)
    assert reply_key_from_info(info, packet) == FlowKey(6, WORLD6.packed, 22, AGENT6.packed, 40000)


def _slow(packet: bytes, outbound: bool) -> FlowKey | None:
    try:
        info = parse_packet(packet)
    except PacketError:
        return None
    return flow_key_from_info(info, packet) if outbound else reply_key_from_info(info, packet)


def _slow_flags(packet: bytes) -> int | None:
    try:
        return parse_packet(packet).tcp_flags
    except PacketError:
        return None


@st.composite
def mutated_packets(draw: st.DrawFn) -> bytes:
    """Real packets of many kinds with a few bytes overwritten and maybe cut short."""
    v4 = draw(st.booleans())
    proto = draw(st.sampled_from([6, 17, 1, 58, 47, 44, 60, 0]))
    body = draw(
        st.sampled_from(
            [tcp(1000, 443, SYN), udp(5353, 53, b"x"), echo(8, 3), echo(128, 3), bytes(48)]
        )
    )
    packet = bytearray(
        ipv4(AGENT4, WORLD4, proto, body) if v4 else ipv6(AGENT6, WORLD6, proto, body)
    )
    for _ in range(draw(st.integers(0, 4))):
        packet[draw(st.integers(0, len(packet) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(packet)))
    return bytes(packet[: len(packet) - cut // 4])


@given(st.one_of(st.binary(max_size=120), mutated_packets()))
@settings(max_examples=500)
def test_keys_never_raise_and_fast_path_agrees(packet: bytes) -> None:
    assert flow_key_from_packet(packet) == _slow(packet, outbound=True)
    assert reply_key_from_packet(packet) == _slow(packet, outbound=False)
    assert tcp_flags(packet) == _slow_flags(packet)


@given(st.binary(max_size=200), st.booleans())
def test_arbitrary_quotes_never_raise(quote: bytes, v4: bool) -> None:
    if v4:
        packet = ipv4(ROUTER4, AGENT4, 1, struct.pack("!BBHI", 3, 1, 0, 0) + quote)
    else:
        packet = ipv6(ROUTER6, AGENT6, 58, struct.pack("!BBHI", 1, 1, 0, 0) + quote)
    key = reply_key_from_packet(packet)
    assert key is None or key.src == (AGENT4 if v4 else AGENT6).packed
    # Read as an error the "agent" (the router here) sends, it must quote a packet to it.
    key = flow_key_from_packet(packet)
    assert key is None or key.src == (ROUTER4 if v4 else ROUTER6).packed


# --- the table -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Literal["allow", "deny"]
    rule_id: str


ALLOW = Decision("allow", "r1")
DENY = Decision("deny", "r2")


def key(n: int = 1, proto: int = 17) -> FlowKey:
    return FlowKey(proto, AGENT4.packed, 40000 + n, WORLD4.packed, 443)


def test_add_get_and_counters() -> None:
    table = FlowTable()
    flow = table.add(key(), "s1", ALLOW, "v1", now=10.0, fqdn="a.example")
    assert flow is not None
    assert table.get(key()) is flow and key() in table and len(table) == 1
    assert table.get(key(2)) is None
    assert (flow.verdict, flow.rule_id, flow.policy_version, flow.fqdn) == (
        "allow",
        "r1",
        "v1",
        "a.example",
    )
    assert (flow.created, flow.last_seen, flow.tcp_state, flow.end_reason) == (
        10.0,
        10.0,
        None,
        None,
    )
    table.seen_out(flow, 100, None, 11.0)
    table.seen_out(flow, 50, None, 12.0)
    table.seen_in(flow, 1000, None, 13.0)
    assert (flow.packets_out, flow.bytes_out, flow.packets_in, flow.bytes_in) == (2, 150, 1, 1000)
    assert flow.last_seen == 13.0
    assert table.count_for("s1") == 1 and table.count_for("s2") == 0
    assert list(table) == [flow]
    with pytest.raises(ValueError, match="already"):
        table.add(key(), "s1", ALLOW, "v1", now=14.0)


def test_tcp_state_from_flags() -> None:
    t = Timeouts()
    table = FlowTable(timeouts=t)
    flow = table.add(key(proto=6), "s1", ALLOW, "v1", 0.0)
    assert flow is not None and flow.tcp_state == TCP_SYN and flow.idle_timeout == t.tcp_syn
    table.seen_out(flow, 60, SYN, 0.0)
    table.seen_out(flow, 60, ACK, 0.1)  # the agent alone cannot establish a flow
    assert flow.tcp_state == TCP_SYN
    table.seen_in(flow, 60, SYN | ACK, 0.2)
    assert flow.tcp_state == TCP_ESTABLISHED and flow.idle_timeout == t.tcp_established
    table.seen_out(flow, 1000, PSH | ACK, 0.3)
    table.seen_in(flow, 60, ACK, 0.4)
    assert flow.tcp_state == TCP_ESTABLISHED
    table.seen_out(flow, 60, FIN | ACK, 0.5)
    assert flow.tcp_state == TCP_CLOSING and flow.idle_timeout == t.tcp_closing
    table.seen_in(flow, 60, ACK, 0.6)
    assert flow.tcp_state == TCP_CLOSING
    table.seen_out(flow, 60, SYN, 0.7)  # the port is reused: a new connection
    assert flow.tcp_state == TCP_SYN
    table.seen_in(flow, 60, ACK, 0.8)
    assert flow.tcp_state == TCP_ESTABLISHED
    table.seen_in(flow, 60, RST, 0.9)
    assert flow.tcp_state == TCP_CLOSING
    table.seen_out(flow, 60, None, 1.0)  # an ICMP error in the flow carries no flags
    assert flow.tcp_state == TCP_CLOSING


@pytest.mark.parametrize(
    ("proto", "timeout"), [(17, 60.0), (1, 30.0), (58, 30.0), (47, 60.0), (6, 30.0)]
)
def test_idle_timeouts(proto: int, timeout: float) -> None:
    table = FlowTable()
    flow = table.add(key(proto=proto), "s1", ALLOW, "v1", 100.0)
    assert flow is not None
    assert table.expire(100.0 + timeout - 0.001) == []
    table.seen_out(flow, 10, None, 120.0)  # activity pushes the end out
    assert table.expire(100.0 + timeout + 1) == []
    assert table.get(flow.key) is flow
    assert table.expire(120.0 + timeout) == [flow]
    assert flow.end_reason == "idle" and table.get(flow.key) is None and len(table) == 0


def test_established_and_closing_timeouts() -> None:
    table = FlowTable(timeouts=Timeouts(tcp_syn=5, tcp_established=1000, tcp_closing=7))
    flow = table.add(key(proto=6), "s1", ALLOW, "v1", 0.0)
    assert flow is not None
    table.seen_in(flow, 60, SYN | ACK, 1.0)
    assert table.expire(900.0) == []
    table.seen_out(flow, 60, ACK, 900.0)
    assert table.expire(1899.0) == []
    # A FIN shortens the timeout: the flow ends 7 s later, not 1000 s later.
    table.seen_out(flow, 60, FIN | ACK, 1899.0)
    assert table.expire(1905.9) == []
    assert table.expire(1906.0) == [flow]
    assert flow.end_reason == "tcp_closed"


def test_a_syn_only_flow_ends_after_the_syn_timeout() -> None:
    table = FlowTable(timeouts=Timeouts(tcp_syn=5))
    flow = table.add(key(proto=6), "s1", ALLOW, "v1", 0.0)
    assert flow is not None
    table.seen_out(flow, 60, SYN, 0.0)
    assert table.expire(5.0) == [flow] and flow.end_reason == "idle"


def test_activity_does_not_touch_the_expiry_queue() -> None:
    """Packets only move last_seen; the queued deadline is re-checked when it comes due."""
    table = FlowTable()
    flow = table.add(key(), "s1", ALLOW, "v1", 0.0)
    assert flow is not None
    for i in range(1000):
        table.seen_out(flow, 10, None, i * 0.05)
    assert table.next_expiry() == 60.0
    assert table.expire(60.0) == []
    assert table.next_expiry() == pytest.approx(999 * 0.05 + 60.0)


def test_expire_respects_its_budget() -> None:
    table = FlowTable()
    flows = [table.add(key(i), "s1", ALLOW, "v1", float(i) / 100) for i in range(50)]
    ended: list[Flow] = []
    for _ in range(5):
        batch = table.expire(1000.0, budget=10)
        assert len(batch) == 10
        ended += batch
    assert table.expire(1000.0, budget=10) == []
    assert ended == flows  # oldest first
    assert {f.end_reason for f in ended} == {"idle"}


def test_bounds_per_session_and_total() -> None:
    table = FlowTable(max_total=5, max_per_session=3)
    assert all(table.add(key(i), "s1", ALLOW, "v1", 0.0) for i in range(3))
    assert table.add(key(3), "s1", ALLOW, "v1", 0.0) is None
    assert table.count_for("s1") == 3
    assert table.add(key(4), "s2", ALLOW, "v1", 0.0) is not None
    assert table.add(key(5), "s3", ALLOW, "v1", 0.0) is not None
    assert table.add(key(6), "s4", ALLOW, "v1", 0.0) is None  # total reached
    assert len(table) == 5 and table.count_for("s4") == 0
    assert len(table.end_session("s1")) == 3
    assert table.add(key(6), "s4", ALLOW, "v1", 1.0) is not None
    with pytest.raises(ValueError):
        FlowTable(max_total=0)


def test_end_session() -> None:
    table = FlowTable()
    mine = [table.add(key(i), "s1", ALLOW, "v1", 0.0) for i in range(3)]
    other = table.add(key(9), "s2", ALLOW, "v1", 0.0)
    ended = table.end_session("s1")
    assert ended == mine
    assert {f.end_reason for f in ended} == {"session_closed"}
    assert table.count_for("s1") == 0 and len(table) == 1 and table.end_session("s1") == []
    # Their queued expiry entries are skipped.
    assert table.expire(1000.0) == [other]


def test_revalidate() -> None:
    table = FlowTable()
    keep = table.add(key(1), "s1", ALLOW, "v1", 0.0)
    revoke = table.add(key(2), "s1", ALLOW, "v1", 0.0)
    still_denied = table.add(key(3), "s1", DENY, "v1", 0.0)
    now_allowed = table.add(key(4), "s1", DENY, "v1", 0.0)
    assert keep and revoke and still_denied and now_allowed
    new_policy = {
        keep.key: Decision("allow", "new-allow"),
        revoke.key: Decision("deny", "new-deny"),
        still_denied.key: Decision("deny", "default"),
        now_allowed.key: Decision("allow", "opened"),
    }
    removed = table.revalidate(lambda flow: new_policy[flow.key], policy_version="v2")
    assert removed == [revoke, now_allowed]
    assert revoke.end_reason == "policy_revoked" and now_allowed.end_reason == "policy_changed"
    assert table.get(revoke.key) is None and table.get(now_allowed.key) is None
    assert (keep.rule_id, keep.policy_version, keep.end_reason) == ("new-allow", "v2", None)
    assert (still_denied.rule_id, still_denied.verdict) == ("default", "deny")
    assert set(END_REASONS) >= {f.end_reason for f in removed if f.end_reason}
    # Without a version the flows keep theirs.
    table.revalidate(lambda flow: Decision(flow.verdict, "again"))
    assert (keep.rule_id, keep.policy_version) == ("again", "v2")


def test_timeouts_must_be_positive() -> None:
    with pytest.raises(ValueError, match="udp"):
        Timeouts(udp=0)


def test_stale_queue_entries_stay_bounded() -> None:
    """Each FIN after a long established spell queues an earlier entry and leaves the
    long one stale; stale entries are compacted away rather than piling up."""
    table = FlowTable(timeouts=Timeouts(tcp_syn=1, tcp_established=1e6, tcp_closing=1))
    flow = table.add(key(proto=6), "s1", ALLOW, "v1", 0.0)
    assert flow is not None
    now = 0.0
    for _ in range(3000):
        now += 1.5
        table.seen_out(flow, 60, SYN, now)
        table.seen_in(flow, 60, SYN | ACK, now)
        assert table.expire(now) == []  # re-queues the flow at its established deadline
        table.seen_out(flow, 60, FIN, now)  # ... and this queues a much earlier one
    assert len(table._heap) <= 2 * len(table) + 1024
    assert table.expire(now + 1.0) == [flow]
    assert flow.end_reason == "tcp_closed"


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "out", "in", "expire", "end"]),
            st.integers(0, 7),  # flow
            st.integers(0, 2),  # session
            st.sampled_from([None, SYN, SYN | ACK, ACK, FIN, RST]),
            st.floats(0, 50),  # time step
        ),
        max_size=60,
    )
)
def test_table_invariants(ops: list[tuple[str, int, int, int | None, float]]) -> None:
    t = Timeouts(tcp_syn=3, tcp_established=40, tcp_closing=2, udp=10, icmp=5, other=7)
    table = FlowTable(max_total=6, max_per_session=3, timeouts=t)
    now = 0.0
    for op, n, session, flags, step in ops:
        now += step
        k = key(n, proto=6 if n % 2 else 17)
        flow = table.get(k)
        if op == "add" and flow is None:
            table.add(k, f"s{session}", ALLOW, "v1", now)
        elif op in ("out", "in") and flow is not None:
            (table.seen_out if op == "out" else table.seen_in)(
                flow, 10, flags if k.proto == 6 else None, now
            )
        elif op == "expire":
            for ended in table.expire(now, budget=3):
                assert ended.last_seen + ended.idle_timeout <= now
                assert ended.end_reason in ("idle", "tcp_closed")
        elif op == "end":
            table.end_session(f"s{session}")
        assert len(table) <= 6
        assert all(table.count_for(f"s{s}") <= 3 for s in range(3))
        assert sum(table.count_for(f"s{s}") for s in range(3)) == len(table)
    table.expire(now, budget=10_000)
    assert all(f.last_seen + f.idle_timeout > now for f in table)
