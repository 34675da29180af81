"""TCP coalescing for TUN writes: the super-packets, cut back as the kernel's GSO cuts them,
give back exactly the segments that went in."""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given
from hypothesis import strategies as st

from zgate_host.gro import NO_OFFLOAD, VNET_HDR_SIZE, coalesce

ACK, PSH, SYN, FIN = 0x10, 0x08, 0x02, 0x01
VNET = struct.Struct("=BBHHHH")


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp_packet(
    seq: int,
    payload: bytes,
    *,
    flags: int = ACK,
    v6: bool = False,
    sport: int = 5201,
    ack: int = 1000,
    window: int = 500,
    options: bytes = b"",
    ttl: int = 64,
    ident: int = 7,
) -> bytes:
    """A valid IPv4/IPv6 TCP segment with correct checksums."""
    src = ipaddress.ip_address("2001:db8::1" if v6 else "10.0.0.1").packed
    dst = ipaddress.ip_address("2001:db8::2" if v6 else "10.0.0.2").packed
    doff = (20 + len(options)) // 4
    tcp = struct.pack("!HHIIBBHHH", sport, 80, seq, ack, doff << 4, flags, window, 0, 0)
    tcp += options
    segment_len = len(tcp) + len(payload)
    if v6:
        pseudo = src + dst + struct.pack("!IxxxB", segment_len, 6)
    else:
        pseudo = src + dst + struct.pack("!xBH", 6, segment_len)
    csum = checksum(pseudo + tcp + payload)
    tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
    if v6:
        ip = struct.pack("!IHBB", 6 << 28, segment_len, 6, ttl) + src + dst
    else:
        ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + segment_len, ident, 0x4000, ttl, 6, 0)
        ip += src + dst
        ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return ip + tcp + payload


def gso_segment(header: bytes, packet: bytes) -> list[bytes]:
    """What the kernel makes of a written (virtio_net_hdr, packet): the segments, with
    their lengths, sequence numbers, IPv4 ids and checksums completed."""
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = VNET.unpack(header)
    if gso_type == 0:
        assert header == NO_OFFLOAD
        return [packet]
    assert flags == 1 and csum_offset == 16
    v6 = gso_type == 4
    ip_len = 40 if v6 else 20
    assert csum_start == ip_len
    head, payload = packet[:hdr_len], packet[hdr_len:]
    # The checksum field holds the pseudo-header sum over the whole super-packet.
    src, dst = (head[8:24], head[24:40]) if v6 else (head[12:16], head[16:20])
    total_len = len(packet) - ip_len
    if v6:
        pseudo = src + dst + struct.pack("!IxxxB", total_len, 6)
    else:
        pseudo = src + dst + struct.pack("!xBH", 6, total_len)
    assert struct.unpack_from("!H", head, ip_len + 16)[0] == (~checksum(pseudo)) & 0xFFFF
    if not v6:
        assert checksum(head[:20]) == 0, "IPv4 header checksum of the super-packet"
    seq = struct.unpack_from("!I", head, ip_len + 4)[0]
    tcp_flags = head[ip_len + 13]
    ident = 0 if v6 else struct.unpack_from("!H", head, 4)[0]
    out = []
    chunks = [payload[i : i + gso_size] for i in range(0, len(payload), gso_size)]
    for n, chunk in enumerate(chunks):
        last = n == len(chunks) - 1
        out.append(
            tcp_packet(
                (seq + n * gso_size) & 0xFFFFFFFF,
                chunk,
                flags=tcp_flags if last else tcp_flags & ~(PSH | FIN),
                v6=v6,
                sport=struct.unpack_from("!H", head, ip_len)[0],
                ack=struct.unpack_from("!I", head, ip_len + 8)[0],
                window=struct.unpack_from("!H", head, ip_len + 14)[0],
                options=bytes(head[ip_len + 20 : hdr_len]),
                ttl=head[7] if v6 else head[8],
                ident=(ident + n) & 0xFFFF,
            )
        )
    return out


def stream(v6: bool, sizes: list[int], seq: int = 1, **kw: object) -> list[bytes]:
    packets = []
    for i, size in enumerate(sizes):
        packets.append(tcp_packet(seq, bytes([i % 256]) * size, v6=v6, ident=7 + i, **kw))  # type: ignore[arg-type]
        seq += size
    return packets


def test_a_run_of_full_segments_becomes_one_super_packet() -> None:
    for v6 in (False, True):
        packets = stream(v6, [1300] * 10 + [200])
        out = coalesce(packets)
        assert len(out) == 1
        header, packet = out[0]
        assert len(header) == VNET_HDR_SIZE
        assert VNET.unpack(header)[3] == 1300
        assert gso_segment(header, packet) == packets


def test_push_and_short_segments_end_a_run() -> None:
    packets = stream(False, [1000, 1000, 1000, 1000], flags=ACK)
    packets[1] = tcp_packet(1001, bytes([1]) * 1000, flags=ACK | PSH, ident=8)
    out = coalesce(packets)
    assert len(out) == 2
    assert [s for h, p in out for s in gso_segment(h, p)] == packets
    assert out[0][1][33] & PSH  # the first super-packet ends with the push


def test_gaps_other_flags_and_other_protocols_pass_through_in_order() -> None:
    a = stream(False, [1000] * 3)
    gap = tcp_packet(1 + 3000 + 500, b"x" * 1000)  # a hole in the sequence
    syn = tcp_packet(9, b"", flags=SYN)
    udp = bytes.fromhex("4500001c0000400040110000") + bytes(8) + bytes(8)
    packets = [*a, gap, syn, udp]
    out = coalesce(packets)
    assert [s for h, p in out for s in gso_segment(h, p)] == packets
    assert [h == NO_OFFLOAD for h, _ in out] == [False, True, True, True]


def test_flows_are_kept_apart_and_each_keeps_its_order() -> None:
    a = stream(False, [1200] * 4, sport=1111)
    b = stream(False, [1200] * 4, sport=2222, seq=50_000)
    mixed = [p for pair in zip(a, b, strict=True) for p in pair]
    out = coalesce(mixed)
    assert len(out) == 2
    assert gso_segment(*out[0]) == a
    assert gso_segment(*out[1]) == b


def test_segments_whose_headers_differ_are_not_joined() -> None:
    first = tcp_packet(1, b"a" * 1000, window=500)
    other_window = tcp_packet(1001, b"b" * 1000, window=501)
    other_ack = tcp_packet(2001, b"c" * 1000, window=501, ack=2000)
    out = coalesce([first, other_window, other_ack])
    assert len(out) == 3


def test_a_super_packet_stays_under_the_ip_length_limit() -> None:
    packets = stream(False, [1400] * 60)
    out = coalesce(packets)
    assert all(len(p) <= 65535 for _, p in out)
    assert [s for h, p in out for s in gso_segment(h, p)] == packets


segment_plans = st.lists(
    st.tuples(
        st.integers(0, 2),  # flow
        st.integers(0, 1400),  # payload size
        st.booleans(),  # PSH
        st.booleans(),  # leave a hole before it
    ),
    max_size=60,
)


@given(segment_plans, st.booleans())
def test_any_batch_comes_back_segment_for_segment(
    plan: list[tuple[int, int, bool, bool]], v6: bool
) -> None:
    seqs = {0: 1, 1: 2**32 - 3000, 2: 77}  # one flow wraps around the sequence space
    packets = []
    for i, (flow, size, push, hole) in enumerate(plan):
        if hole:
            seqs[flow] = (seqs[flow] + 100) & 0xFFFFFFFF
        packets.append(
            tcp_packet(
                seqs[flow],
                bytes([i % 256]) * size,
                flags=ACK | (PSH if push else 0),
                v6=v6,
                sport=1000 + flow,
                ident=i,
            )
        )
        seqs[flow] = (seqs[flow] + size) & 0xFFFFFFFF
    out = coalesce(packets)
    got = [s for h, p in out for s in gso_segment(h, p)]
    assert sorted(got) == sorted(packets)
    for flow in range(3):
        port = struct.pack("!H", 1000 + flow)
        offset = 40 if v6 else 20
        assert [p for p in got if p[offset : offset + 2] == port] == [
            p for p in packets if p[offset : offset + 2] == port
        ]
