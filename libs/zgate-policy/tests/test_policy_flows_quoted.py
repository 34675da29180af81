"""ICMP/ICMPv6 errors that quote a packet (flows.py: ``_quoted_key``, ``_parse_quoted`` and
the error path of ``_key_from_info``): an error belongs to the flow of the packet it quotes,
with the agent on the right side, and to no flow when the quote is cut short, malformed,
about somebody else or itself an error. Edge cases: IPv4 options in the quote, IPv6
extension headers (options, AH, fragments, the bounded chain), every error type, inner
protocols without ports. None of it may raise."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zgate_policy.flows import (
    FlowKey,
    FlowTable,
    _parse_quoted,
    _quoted_key,
    flow_key_from_info,
    flow_key_from_packet,
    reply_key_from_info,
    reply_key_from_packet,
)
from zgate_proto.icmp import (
    admin_prohibited,
    destination_unreachable,
    packet_too_big,
    time_exceeded,
)
from zgate_proto.ip import internet_checksum, parse_packet

Address = IPv4Address | IPv6Address

AGENT4 = IPv4Address("100.64.0.2")
WORLD4 = IPv4Address("203.0.113.9")
ROUTER4 = IPv4Address("198.51.100.1")
AGENT6 = IPv6Address("2001:db8:100::2")
WORLD6 = IPv6Address("2001:db8:1::9")
ROUTER6 = IPv6Address("2001:db8:ff::1")

SYN = 0x02
TCP, UDP, GRE = 6, 17, 47


# --- packet builders -------------------------------------------------------------------------


def ipv4(
    src: IPv4Address,
    dst: IPv4Address,
    proto: int,
    payload: bytes,
    *,
    frag: int = 0x4000,
    options: bytes = b"",
) -> bytes:
    assert len(options) % 4 == 0
    ihl = 5 + len(options) // 4
    header = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x40 | ihl,
            0,
            ihl * 4 + len(payload),
            7,
            frag,
            64,
            proto,
            0,
            src.packed,
            dst.packed,
        )
        + options
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


def ip(src: Address, dst: Address, proto: int, payload: bytes) -> bytes:
    if isinstance(src, IPv4Address) and isinstance(dst, IPv4Address):
        return ipv4(src, dst, proto, payload)
    assert isinstance(src, IPv6Address) and isinstance(dst, IPv6Address)
    return ipv6(src, dst, proto, payload)


def tcp(sport: int, dport: int, flags: int = SYN) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 0x50, flags, 65535, 0, 0)


def udp(sport: int, dport: int, data: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


def icmp(kind: int, ident: int = 0, code: int = 0, data: bytes = b"ping") -> bytes:
    return struct.pack("!BBHHH", kind, code, 0, ident, 1) + data


def icmp_proto(address: Address) -> int:
    return 1 if address.version == 4 else 58


def echo_request(address: Address) -> int:
    return 8 if address.version == 4 else 128


def echo_reply(address: Address) -> int:
    return 0 if address.version == 4 else 129


def unreachable_type(address: Address) -> int:
    return 3 if address.version == 4 else 1


def error(src: Address, dst: Address, quote: bytes, kind: int | None = None) -> bytes:
    """An ICMP error from src to dst quoting ``quote`` as given (no cut, no eligibility
    rules), so that the tests control every quoted byte."""
    if kind is None:
        kind = unreachable_type(src)
    return ip(src, dst, icmp_proto(src), struct.pack("!BBHI", kind, 1, 0, 0) + quote)


def ext(next_header: int, length_units: int = 0) -> bytes:
    """An IPv6 options-like extension header (hop-by-hop, routing, destination options) of
    (length_units + 1) * 8 bytes."""
    return bytes([next_header, length_units]) + bytes(6 + 8 * length_units)


BOTH = pytest.mark.parametrize(
    ("agent", "world", "router"),
    [(AGENT4, WORLD4, ROUTER4), (AGENT6, WORLD6, ROUTER6)],
    ids=["v4", "v6"],
)


def originals(agent: Address, world: Address) -> dict[str, bytes]:
    """Packets from the agent of each quotable kind."""
    return {
        "tcp": ip(agent, world, TCP, tcp(40000, 443)),
        "udp": ip(agent, world, UDP, udp(40001, 53, bytes(1400))),  # the quote is cut short
        "echo": ip(agent, world, icmp_proto(agent), icmp(echo_request(agent), 0x4242)),
    }


# --- the error reaches the flow it is about --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Literal["allow", "deny"]
    rule_id: str


@BOTH
@pytest.mark.parametrize("inner", ["tcp", "udp", "echo"])
@pytest.mark.parametrize("kind", ["unreachable", "time_exceeded", "too_big"])
def test_an_error_has_the_reply_key_of_the_flow_it_quotes(
    agent: Address, world: Address, router: Address, inner: str, kind: str
) -> None:
    original = originals(agent, world)[inner]
    key = flow_key_from_packet(original)
    assert key is not None and key.src == agent.packed
    if kind == "unreachable":
        err = destination_unreachable(original, router, 1)
    elif kind == "time_exceeded":
        err = time_exceeded(original, router)
    else:
        err = packet_too_big(original, router, 576 if agent.version == 4 else 1280)
    assert err is not None
    assert reply_key_from_packet(err) == key
    # Through the table: the error reaches the agent when its flow is there, not otherwise.
    table = FlowTable()
    assert table.get(key) is None
    assert table.add(key, "s1", Decision("allow", "r1"), "v1", now=1.0) is not None
    err_key = reply_key_from_packet(err)
    assert err_key is not None and table.get(err_key) is not None
    # The same error about another flow of the agent (another port / identifier).
    other = bytearray(original)
    port_at = 20 if agent.version == 4 else 40
    if inner == "echo":
        port_at += 4  # the echo identifier
    other[port_at + 1] ^= 0x01
    other_err = admin_prohibited(bytes(other), router)
    assert other_err is not None
    other_key = reply_key_from_packet(other_err)
    assert other_key is not None and other_key != key and table.get(other_key) is None


@BOTH
@pytest.mark.parametrize("inner", ["tcp", "udp", "echo"])
def test_the_key_of_an_error_names_the_quoted_addresses_and_ports(
    agent: Address, world: Address, router: Address, inner: str
) -> None:
    """Field by field, so that swapped ports or addresses are seen even where the flow key
    itself would be built the same wrong way."""
    quoted = originals(agent, world)[inner]
    proto = {"tcp": TCP, "udp": UDP, "echo": icmp_proto(agent)}[inner]
    ports = {"tcp": (40000, 443), "udp": (40001, 53), "echo": (0x4242, 0x4242)}[inner]
    expected = FlowKey(proto, agent.packed, ports[0], world.packed, ports[1])
    assert reply_key_from_packet(error(router, agent, quoted)) == expected


@BOTH
def test_an_error_from_the_agent_quotes_a_packet_to_it(
    agent: Address, world: Address, router: Address
) -> None:
    """The agent's own errors (port unreachable for a late UDP answer, an error about an
    echo reply) belong to its flow; about a packet that it sent, they belong to none."""
    answer = ip(world, agent, UDP, udp(53, 40001))
    expected = FlowKey(UDP, agent.packed, 40001, world.packed, 53)
    assert flow_key_from_packet(error(agent, world, answer)) == expected
    pong = ip(world, agent, icmp_proto(agent), icmp(echo_reply(agent), 9))
    assert flow_key_from_packet(error(agent, world, pong)) == FlowKey(
        icmp_proto(agent), agent.packed, 9, world.packed, 9
    )
    # The agent quoting a packet it sent itself, or one between two others: no key.
    sent = ip(agent, world, UDP, udp(40001, 53))
    assert flow_key_from_packet(error(agent, world, sent)) is None
    assert flow_key_from_packet(error(agent, world, ip(world, router, UDP, udp(1, 2)))) is None
    # Towards the agent, the quote must be of a packet from it.
    assert reply_key_from_packet(error(router, agent, answer)) is None
    assert reply_key_from_packet(error(router, agent, ip(world, router, UDP, udp(1, 2)))) is None


@BOTH
def test_the_info_variants_read_errors_too(agent: Address, world: Address, router: Address) -> None:
    """``*_key_from_info`` (for a packet the caller parsed) give an error the same key."""
    quoted = ip(agent, world, UDP, udp(40000, 53))
    expected = FlowKey(UDP, agent.packed, 40000, world.packed, 53)
    towards = error(router, agent, quoted)
    assert reply_key_from_info(parse_packet(towards), towards) == expected
    from_agent = error(agent, world, ip(world, agent, UDP, udp(53, 40000)))
    assert flow_key_from_info(parse_packet(from_agent), from_agent) == expected


# --- which ICMP messages are errors ----------------------------------------------------------


@pytest.mark.parametrize("kind", [3, 4, 5, 11, 12])
def test_every_icmpv4_error_type_is_read_as_an_error(kind: int) -> None:
    quoted = ipv4(AGENT4, WORLD4, UDP, udp(40000, 53))
    expected = FlowKey(UDP, AGENT4.packed, 40000, WORLD4.packed, 53)
    assert reply_key_from_packet(error(ROUTER4, AGENT4, quoted, kind)) == expected


@pytest.mark.parametrize("kind", [1, 2, 3, 4, 127])
def test_every_icmpv6_type_below_128_is_read_as_an_error(kind: int) -> None:
    quoted = ipv6(AGENT6, WORLD6, UDP, udp(40000, 53))
    expected = FlowKey(UDP, AGENT6.packed, 40000, WORLD6.packed, 53)
    assert reply_key_from_packet(error(ROUTER6, AGENT6, quoted, kind)) == expected


@pytest.mark.parametrize(
    ("version", "kind"),
    [(4, k) for k in (0, 1, 2, 6, 8, 9, 10, 13, 14, 128)]
    + [(6, k) for k in (128, 129, 130, 135, 136, 200, 255)],
)
def test_other_icmp_types_are_no_errors(version: int, kind: int) -> None:
    """A non-error message that happens to carry a packet is no error: ports 0 or, for an
    echo reply, its identifier (the quote's first bytes are not read as a quote)."""
    agent, world, router = (AGENT4, WORLD4, ROUTER4) if version == 4 else (AGENT6, WORLD6, ROUTER6)
    quoted = ip(agent, world, UDP, udp(40000, 53))
    key = reply_key_from_packet(error(router, agent, quoted, kind))
    proto = icmp_proto(agent)
    if kind == echo_reply(agent):
        ident = 0  # error() puts a zero word where the echo identifier is
        assert key == FlowKey(proto, agent.packed, ident, router.packed, ident)
    else:
        assert key == FlowKey(proto, agent.packed, 0, router.packed, 0)


# --- truncated and malformed quotes ----------------------------------------------------------


@BOTH
@pytest.mark.parametrize("inner", ["tcp", "udp", "echo"])
def test_a_quote_needs_the_ip_header_and_the_transport_bytes_read(
    agent: Address, world: Address, router: Address, inner: str
) -> None:
    """Just enough of the quote (IP header, then 4 bytes of ports or 8 of an ICMP header)
    gives the key; one byte less gives none."""
    quoted = originals(agent, world)[inner]
    header = 20 if agent.version == 4 else 40
    need = header + (8 if inner == "echo" else 4)
    key = flow_key_from_packet(quoted)
    assert reply_key_from_packet(error(router, agent, quoted[:need])) == key
    for cut in (need - 1, header, header - 1, 1, 0):
        assert reply_key_from_packet(error(router, agent, quoted[:cut])) is None


@BOTH
def test_the_outer_packet_bounds_the_quote(agent: Address, world: Address, router: Address) -> None:
    """Bytes after the outer packet's declared length are not part of the quote."""
    quoted = ip(agent, world, UDP, udp(40000, 53))
    header = 20 if agent.version == 4 else 40
    short = error(router, agent, quoted[: header + 3])
    assert reply_key_from_packet(short) is None
    assert reply_key_from_packet(short + quoted[header + 3 :]) is None  # trailing bytes


@BOTH
def test_a_quote_of_the_other_ip_version_has_no_key(
    agent: Address, world: Address, router: Address
) -> None:
    if agent.version == 4:
        quoted = ipv6(AGENT6, WORLD6, UDP, udp(40000, 53))
    else:
        quoted = ipv4(AGENT4, WORLD4, UDP, udp(40000, 53)) + bytes(20)
    # Even with the agent's address where the right version's header has its source.
    forged = bytearray(quoted)
    if agent.version == 4:
        forged[12:16] = agent.packed
    else:
        forged[8:24] = agent.packed
    for q in (quoted, bytes(forged)):
        assert reply_key_from_packet(error(router, agent, q)) is None


@BOTH
@pytest.mark.parametrize("nibble", [0, 4, 5, 6, 7, 15])
def test_a_quote_must_have_the_version_of_the_error(
    agent: Address, world: Address, router: Address, nibble: int
) -> None:
    """The quoted header's version field is read, not only its length."""
    quoted = bytearray(ip(agent, world, UDP, udp(40000, 53)) + bytes(20))
    quoted[0] = (nibble << 4) | (quoted[0] & 0x0F)
    key = reply_key_from_packet(error(router, agent, bytes(quoted)))
    if nibble == agent.version:
        assert key == FlowKey(UDP, agent.packed, 40000, world.packed, 53)
    else:
        assert key is None


def test_quoted_ipv4_options_move_the_transport_header() -> None:
    for words in (1, 2, 10):  # IHL 6, 7, 15
        options = bytes([1] * (4 * words))  # NOPs
        quoted = ipv4(AGENT4, WORLD4, UDP, udp(40000, 53), options=options)
        expected = FlowKey(UDP, AGENT4.packed, 40000, WORLD4.packed, 53)
        assert flow_key_from_packet(quoted) == expected
        err = admin_prohibited(quoted, ROUTER4)
        assert err is not None and reply_key_from_packet(err) == expected
        assert reply_key_from_packet(error(ROUTER4, AGENT4, quoted)) == expected
        # Cut inside the options, or before the ports after them: no key.
        ihl = 20 + 4 * words
        for cut in (ihl - 1, ihl + 3):
            assert reply_key_from_packet(error(ROUTER4, AGENT4, quoted[:cut])) is None
        assert reply_key_from_packet(error(ROUTER4, AGENT4, quoted[: ihl + 4])) == expected


@pytest.mark.parametrize("ihl", [0, 1, 4])
def test_a_quoted_ipv4_header_length_below_five_words_has_no_key(ihl: int) -> None:
    quoted = bytearray(ipv4(AGENT4, WORLD4, UDP, udp(40000, 53)) + bytes(40))
    quoted[0] = 0x40 | ihl
    assert reply_key_from_packet(error(ROUTER4, AGENT4, bytes(quoted))) is None


def test_quoted_ipv4_fragments() -> None:
    """Only the first fragment has ports; the flags (DF, MF) are not part of the offset."""
    with_ports = FlowKey(UDP, AGENT4.packed, 40000, WORLD4.packed, 53)
    no_ports = FlowKey(UDP, AGENT4.packed, 0, WORLD4.packed, 0)
    for frag, expected in (
        (0x0000, with_ports),
        (0x4000, with_ports),  # DF
        (0x2000, with_ports),  # MF, offset 0: the first fragment
        (0x6000, with_ports),
        (0x8000, with_ports),  # the reserved bit
        (0x0001, no_ports),  # offset 8 bytes
        (0x2100, no_ports),  # offset in the high bits of the field
        (0x1FFF, no_ports),
    ):
        quoted = ipv4(AGENT4, WORLD4, UDP, udp(40000, 53), frag=frag)
        assert reply_key_from_packet(error(ROUTER4, AGENT4, quoted)) == expected, hex(frag)
    # A later fragment needs no transport bytes at all.
    later = ipv4(AGENT4, WORLD4, UDP, b"", frag=0x0001)
    assert reply_key_from_packet(error(ROUTER4, AGENT4, later)) == no_ports


@BOTH
def test_quoted_packets_without_ports_have_ports_zero(
    agent: Address, world: Address, router: Address
) -> None:
    """Other protocols, the other version's ICMP number and ICMP messages other than the
    echo the flow would have: ports 0, not the bytes where ports would be."""
    proto = icmp_proto(agent)
    other_icmp = 58 if agent.version == 4 else 1
    for inner_proto, payload in (
        (GRE, bytes(range(1, 9))),
        (other_icmp, icmp(echo_request(agent), 0x4242)),
        (proto, icmp(echo_reply(agent), 0x4242)),  # not a request from the agent
        (proto, icmp(13 if agent.version == 4 else 130, 0x4242)),
    ):
        quoted = ip(agent, world, inner_proto, payload)
        expected = FlowKey(inner_proto, agent.packed, 0, world.packed, 0)
        assert reply_key_from_packet(error(router, agent, quoted)) == expected
    # A GRE quote needs no transport bytes.
    gre = ip(agent, world, GRE, b"")
    assert reply_key_from_packet(error(router, agent, gre)) == FlowKey(
        GRE, agent.packed, 0, world.packed, 0
    )


@BOTH
@pytest.mark.parametrize("kind", ["unreachable", "too_big", "time_exceeded"])
def test_errors_about_errors_have_no_key(
    agent: Address, world: Address, router: Address, kind: str
) -> None:
    kinds = {
        "unreachable": unreachable_type(agent),
        "too_big": 3 if agent.version == 4 else 2,
        "time_exceeded": 11 if agent.version == 4 else 3,
    }
    first = error(agent, world, ip(world, agent, UDP, udp(53, 40000)), kinds[kind])
    assert flow_key_from_packet(first) is not None
    assert reply_key_from_packet(error(router, agent, first)) is None
    assert reply_key_from_packet(error(router, agent, first[: len(first) - 8])) is None


# --- IPv6 extension headers in the quote -----------------------------------------------------

DST_OPTS, HOP_BY_HOP, ROUTING, AH, FRAGMENT = 60, 0, 43, 51, 44
V6_PORTS = FlowKey(UDP, AGENT6.packed, 40000, WORLD6.packed, 53)
V6_NO_PORTS = FlowKey(UDP, AGENT6.packed, 0, WORLD6.packed, 0)


def quoted6(first: int, chain: bytes, transport: bytes = udp(40000, 53)) -> bytes:
    return error(ROUTER6, AGENT6, ipv6(AGENT6, WORLD6, first, chain + transport))


@pytest.mark.parametrize("kind", [HOP_BY_HOP, ROUTING, DST_OPTS])
@pytest.mark.parametrize("units", [0, 1, 3])
def test_quoted_ipv6_options_headers_are_skipped(kind: int, units: int) -> None:
    assert reply_key_from_packet(quoted6(kind, ext(UDP, units))) == V6_PORTS


def test_quoted_ipv6_header_chains() -> None:
    chain = ext(ROUTING, 1) + ext(DST_OPTS) + ext(UDP, 2)
    assert reply_key_from_packet(quoted6(HOP_BY_HOP, chain)) == V6_PORTS
    # AH: its length is in 4-byte units minus 2 (here 3 -> 20 bytes).
    ah = bytes([UDP, 3]) + bytes(18)
    assert reply_key_from_packet(quoted6(AH, ah)) == V6_PORTS
    assert reply_key_from_packet(quoted6(DST_OPTS, ext(AH) + ah)) == V6_PORTS
    ah_min = bytes([UDP, 0]) + bytes(6)  # length 0: 8 bytes
    assert reply_key_from_packet(quoted6(AH, ah_min)) == V6_PORTS
    # A first fragment (offset 0, more fragments) carries the ports.
    first = struct.pack("!BBHI", UDP, 0, 1, 77)
    assert reply_key_from_packet(quoted6(FRAGMENT, first)) == V6_PORTS
    assert reply_key_from_packet(quoted6(FRAGMENT, struct.pack("!BBHI", UDP, 0, 0, 7))) == (
        V6_PORTS
    )
    # A later fragment (offset 8, the low flag bits aside) carries none.
    for field in (8, 9, 0xFFF8, 0x0010, 0x0100, 0x8000):
        later = struct.pack("!BBHI", UDP, 0, field, 77)
        assert reply_key_from_packet(quoted6(FRAGMENT, later, b"")) == V6_NO_PORTS, field
    # Only the offset bits count: the reserved bits and M flag alone do not make it later.
    for field in (1, 6, 7):
        head = struct.pack("!BBHI", UDP, 0, field, 77)
        assert reply_key_from_packet(quoted6(FRAGMENT, head)) == V6_PORTS, field
    # A fragment header after options.
    later = struct.pack("!BBHI", TCP, 0, 16, 77)
    assert reply_key_from_packet(quoted6(DST_OPTS, ext(FRAGMENT) + later, b"")) == FlowKey(
        TCP, AGENT6.packed, 0, WORLD6.packed, 0
    )


def test_quoted_ipv6_chains_cut_short_have_no_key() -> None:
    full = ipv6(AGENT6, WORLD6, DST_OPTS, ext(AH, 1) + bytes([UDP, 1]) + bytes(10) + udp(1, 2))
    assert reply_key_from_packet(error(ROUTER6, AGENT6, full)) == FlowKey(
        UDP, AGENT6.packed, 1, WORLD6.packed, 2
    )
    for cut in range(40, len(full) - 4):
        # Every cut before the ports' 4 bytes: inside an extension header or before ports.
        assert reply_key_from_packet(error(ROUTER6, AGENT6, full[:cut])) is None, cut
    # The two bytes an options header or AH needs, and the 8 of a fragment header.
    for kind, need in ((DST_OPTS, 2), (AH, 2), (FRAGMENT, 8)):
        # Chain ends right after the bytes read: a "later fragment" reads none after it.
        head = ipv6(AGENT6, WORLD6, kind, b"")
        assert reply_key_from_packet(error(ROUTER6, AGENT6, head + bytes(need - 1))) is None
    # The same where the outer packet itself ends inside the extension header (its bytes
    # past the quote are not there to read): no key, no IndexError.
    for kind, need in ((DST_OPTS, 2), (ROUTING, 2), (AH, 2), (FRAGMENT, 8)):
        for cut in range(need):
            head = ipv6(AGENT6, WORLD6, kind, bytes([GRE, 0, 0, 8, 0, 0, 0, 1])[:cut])
            assert reply_key_from_packet(error(ROUTER6, AGENT6, head)) is None, (kind, cut)
    # ... and those bytes are enough: a chain that ends the quote right after them, with a
    # protocol without ports next, has a key (the rest of the header is not read).
    for kind in (DST_OPTS, HOP_BY_HOP, ROUTING, AH):
        head = ipv6(AGENT6, WORLD6, kind, bytes([GRE, 0]))
        assert reply_key_from_packet(error(ROUTER6, AGENT6, head)) == FlowKey(
            GRE, AGENT6.packed, 0, WORLD6.packed, 0
        ), kind
    first = ipv6(AGENT6, WORLD6, FRAGMENT, struct.pack("!BBHI", GRE, 0, 1, 1))
    assert reply_key_from_packet(error(ROUTER6, AGENT6, first)) == FlowKey(
        GRE, AGENT6.packed, 0, WORLD6.packed, 0
    )
    later = ipv6(AGENT6, WORLD6, FRAGMENT, struct.pack("!BBHI", GRE, 0, 8, 1))
    assert reply_key_from_packet(error(ROUTER6, AGENT6, later)) == FlowKey(
        GRE, AGENT6.packed, 0, WORLD6.packed, 0
    )
    # Options header of 0 units: exactly 8 bytes, then GRE with nothing after it.
    assert reply_key_from_packet(
        error(ROUTER6, AGENT6, ipv6(AGENT6, WORLD6, DST_OPTS, bytes([GRE, 0]) + bytes(6)))
    ) == FlowKey(GRE, AGENT6.packed, 0, WORLD6.packed, 0)
    # The length byte of an options header counts: read past it, no ports fit.
    long_ext = ipv6(AGENT6, WORLD6, DST_OPTS, bytes([UDP, 1]) + bytes(6) + udp(1, 2))
    assert reply_key_from_packet(error(ROUTER6, AGENT6, long_ext)) is None


def test_the_ipv6_extension_header_walk_is_bounded() -> None:
    """Fifteen extension headers are walked; a chain of sixteen or more has no key."""
    for count, expected in ((1, V6_PORTS), (15, V6_PORTS), (16, None), (40, None)):
        chain = b"".join(ext(DST_OPTS) for _ in range(count - 1)) + ext(UDP)
        assert reply_key_from_packet(quoted6(DST_OPTS, chain)) == expected, count


# --- the parser never raises -----------------------------------------------------------------

NEXT_HEADERS = st.one_of(
    st.sampled_from([HOP_BY_HOP, ROUTING, DST_OPTS, AH, FRAGMENT, TCP, UDP, 1, 58, GRE]),
    st.integers(0, 255),
)


@st.composite
def quotes(draw: st.DrawFn) -> tuple[bytes, int, int, int]:
    """(packet, start, end, version): some bytes, then a quoted IP header of that version
    (any header length, a likely protocol), a chain of extension-header-like chunks and
    random bytes, cut anywhere; the packet ends at ``end`` or goes on past it."""
    version = draw(st.sampled_from([4, 6]))
    prefix = draw(st.binary(max_size=12))
    header = bytearray(draw(st.binary(min_size=40, max_size=40)))
    if version == 4:
        header[0] = 0x40 | draw(st.integers(0, 15))
        header[6] = draw(st.sampled_from([0, 0x20, 0x40, header[6]]))
        header[7] = draw(st.sampled_from([0, header[7]]))
        header[9] = draw(NEXT_HEADERS)
        header = header[: draw(st.sampled_from([20, 24, 40]))]
    else:
        header[0] = 0x60 | (header[0] & 0x0F)
        header[6] = draw(NEXT_HEADERS)
    chain = b""
    for _ in range(draw(st.integers(0, 18))):
        size = draw(st.sampled_from([2, 8, 16, 24]))
        chunk = bytearray(draw(st.binary(min_size=size, max_size=size)))
        chunk[0] = draw(NEXT_HEADERS)
        chunk[1] = draw(st.sampled_from([0, 1, 2, chunk[1]]))
        if size >= 4:
            chunk[2:4] = draw(st.sampled_from([b"\0\0", b"\0\x01", b"\0\x08", bytes(chunk[2:4])]))
        chain += bytes(chunk)
    packet = prefix + bytes(header) + chain + draw(st.binary(max_size=24))
    end = draw(st.integers(len(prefix), len(packet)))
    if draw(st.booleans()):
        packet = packet[:end]
    return packet, len(prefix), end, version


def _random_windows() -> st.SearchStrategy[tuple[bytes, int, int, int]]:
    return st.tuples(
        st.binary(max_size=160), st.integers(0, 200), st.integers(0, 200), st.sampled_from([4, 6])
    ).map(lambda t: (t[0], t[1], min(t[2], len(t[0])), t[3]))


@given(st.one_of(quotes(), _random_windows()), st.booleans())
@settings(max_examples=1500)
def test_the_quote_parser_never_raises(quote: tuple[bytes, int, int, int], outbound: bool) -> None:
    """Any bytes, any window inside them (the outer packet's declared length is never past
    its end), either version and direction: a key or None, never an exception."""
    data, start, end, version = quote
    agent = (AGENT4 if version == 4 else AGENT6).packed
    parsed = _parse_quoted(data, start, end, version)
    if parsed is not None:
        proto, src, dst, _, _ = parsed
        assert 0 <= proto <= 255 and len(src) == len(dst) == (4 if version == 4 else 16)
    # With the agent where the quote has it, so that the ports are read too.
    for candidate in (agent, data[start + 12 : start + 16], data[start + 8 : start + 24]):
        key = _quoted_key(data, start, end, version, outbound, candidate)
        if key is not None:
            assert isinstance(key, FlowKey)
            assert key.src == candidate  # the agent is always on the key's source side
            assert 0 <= key.sport <= 0xFFFF and 0 <= key.dport <= 0xFFFF


@given(st.binary(max_size=160), st.sampled_from([4, 6]), st.sampled_from([1, 3, 4, 11]))
@settings(max_examples=500)
def test_errors_with_any_quote_never_raise(quote: bytes, version: int, kind: int) -> None:
    """The same through the public functions, with a quote starting as a real header."""
    agent, world, router = (AGENT4, WORLD4, ROUTER4) if version == 4 else (AGENT6, WORLD6, ROUTER6)
    head = ip(agent, world, quote[0] if quote else UDP, b"")
    packet = error(router, agent, head[: len(head) - 4] + quote, kind)
    key = reply_key_from_packet(packet)
    assert key is None or key.src == agent.packed
    back = flow_key_from_packet(packet)
    assert back is None or back.src == router.packed
