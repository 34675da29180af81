"""The agent's drop paths and its fallback to stream mode, against a real relay in this
process (loopback QUIC, in-memory devices): every packet it cannot send is counted by
reason in ``zgate_agent_drops_total{reason}``, and the ones that should be answered are."""

from __future__ import annotations

import ipaddress
import logging
import struct
from pathlib import Path
from typing import Any

import pytest

import zgate_relay.core
from zgate_agent.link import ClientLink
from zgate_agent.metrics import AgentMetrics
from zgate_lab.harness import (
    INTERNET,
    AgentUnderTest,
    RelayUnderTest,
    make_pki,
    running_relay,
    start_agent,
    udp4,
    until,
)
from zgate_proto.engines import ENGINES
from zgate_proto.engines.base import QuicConn
from zgate_proto.icmp import ICMPV4_QUOTE_LIMIT, ICMPv4Type, ICMPv6Type
from zgate_proto.ip import (
    IPProto,
    internet_checksum,
    ones_complement_sum,
    parse_packet,
)
from zgate_proto.session import PacketMode, ServerConnection

INTERNET6 = ipaddress.IPv6Address("2001:db8:203::10")


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """The agent's QUIC engine (the relay's is the relay's concern)."""
    name: str = request.param
    return name


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    return make_pki(tmp_path / "pki", ["alice"])


def drops(metrics: AgentMetrics, reason: str) -> float:
    """``zgate_agent_drops_total{reason}`` as Prometheus reads it."""
    value = metrics.registry.get_sample_value("zgate_agent_drops_total", {"reason": reason})
    assert value is not None, reason
    return value


def address(agent: AgentUnderTest, version: int) -> str:
    addresses: list[str] = agent.agent.status()["addresses"]
    return next(a.split("/")[0] for a in addresses if ipaddress.ip_interface(a).version == version)


def udp4_df(src: str, dst: str, payload: bytes) -> bytes:
    """An IPv4/UDP packet with Don't Fragment set (path MTU discovery's probes)."""
    packet = bytearray(udp4(src, dst, payload))
    packet[6] |= 0x40
    packet[10:12] = b"\0\0"
    packet[10:12] = internet_checksum(packet[:20]).to_bytes(2, "big")
    return bytes(packet)


def udp6(src: str, dst: str, payload: bytes, sport: int = 40000, dport: int = 7) -> bytes:
    """An IPv6/UDP packet (checksum left 0: nothing here checks it)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    header = struct.pack(
        "!IHBB16s16s",
        6 << 28,
        len(udp),
        IPProto.UDP,
        64,
        ipaddress.IPv6Address(src).packed,
        ipaddress.IPv6Address(dst).packed,
    )
    return header + udp


async def next_from(relay: RelayUnderTest, timeout: float = 5.0) -> bytes:
    return await relay.egress.received(timeout)


def live_link(agent: AgentUnderTest) -> ClientLink:
    """The agent's link to the relay, which it has while connected."""
    link = agent.agent.link
    assert link is not None
    return link


async def answer_to_too_big(agent: AgentUnderTest, big: bytes) -> bytes:
    """What the agent writes back on its device for ``big``, a packet over its path MTU,
    once it has counted exactly one ``too_big`` drop for it."""
    before = drops(agent.metrics, "too_big")
    agent.device.inject(big)
    icmp = await agent.device.received()
    assert drops(agent.metrics, "too_big") - before == 1
    return icmp


# ------------------------------------------------------------------ not_connected


async def test_packets_while_the_tunnel_is_down_are_dropped_and_counted(
    engine: str, pki: Path
) -> None:
    async with running_relay(pki) as relay:
        port = relay.port
        agent = await start_agent(relay, "alice", quic_engine=engine, connect_timeout=1.0)
        own = agent.address4
        before = drops(agent.metrics, "not_connected")
        # A positive control: while the tunnel is up the same packet gets through.
        agent.device.inject(udp4(own, str(INTERNET), b"up"))
        assert parse_packet(await next_from(relay)).src_address == ipaddress.ip_address(own)
    # The relay closed the connection on its way out: the agent sees it and retries.
    await until(lambda: not agent.agent.connected.is_set(), what="the agent to notice")
    assert agent.agent.status()["state"] != "connected"
    try:
        down = [udp4(own, str(INTERNET), f"down {i}".encode()) for i in range(5)]
        for packet in down:
            agent.device.inject(packet)
        await until(
            lambda: drops(agent.metrics, "not_connected") - before == len(down),
            what="five not_connected drops",
        )
        assert drops(agent.metrics, "queue_full") == 0
        assert not agent.device.drain()  # nothing looped back onto the device either
        # The relay comes back on the same port: nothing of what was dropped is sent late.
        async with running_relay(pki, port=port) as back:
            await until(agent.agent.connected.is_set, what="the agent to reconnect")
            own = agent.address4
            agent.device.inject(udp4(own, str(INTERNET), b"back"))
            first = await next_from(back)
            assert first.endswith(b"back"), first
            assert not back.egress.drain()
            assert drops(agent.metrics, "not_connected") - before == len(down)
    finally:
        await agent.stop()


# ------------------------------------------------------------------------ too_big


async def test_a_packet_too_big_for_a_datagram_is_answered_with_icmp_frag_needed(
    engine: str,
    pki: Path,
) -> None:
    async with running_relay(pki) as relay:
        agent = await start_agent(relay, "alice", quic_engine=engine)
        try:
            link = live_link(agent)
            mtu = link.max_packet
            # What one DATAGRAM frame carries on this path, less the quarter stream ID and
            # the context ID (one byte each for the first stream).
            assert mtu == link.quic.max_datagram_payload - 2
            assert 1300 < mtu < 1452
            own = agent.address4
            big = udp4_df(own, str(INTERNET), bytes(mtu + 1 - 28))
            assert len(big) == mtu + 1
            icmp = await answer_to_too_big(agent, big)
            counted = drops(agent.metrics, "too_big")
            info = parse_packet(icmp)
            assert info.version == 4
            assert info.proto == IPProto.ICMP
            assert str(info.src_address) == own and str(info.dst_address) == own
            assert (info.icmp_type, info.icmp_code) == (ICMPv4Type.DESTINATION_UNREACHABLE, 4)
            assert internet_checksum(icmp[:20]) == 0
            message = icmp[info.header_len :]
            assert internet_checksum(message) == 0
            # RFC 1191 §4: the next-hop MTU in the low 16 bits of the second word.
            assert struct.unpack("!HH", message[4:8]) == (0, mtu)
            # The original packet from its IP header on, as much as fits in 576 bytes.
            assert message[8:] == big[:ICMPV4_QUOTE_LIMIT]
            # The packet itself went nowhere; one that fits still does.
            fits = udp4_df(own, str(INTERNET), bytes(mtu - 28))
            agent.device.inject(fits)
            assert await next_from(relay) == fits
            assert not relay.egress.drain()
            assert drops(agent.metrics, "too_big") == counted
        finally:
            await agent.stop()


async def test_an_ipv6_packet_too_big_is_answered_with_icmpv6_packet_too_big(
    engine: str,
    pki: Path,
) -> None:
    async with running_relay(pki) as relay:
        agent = await start_agent(relay, "alice", quic_engine=engine)
        try:
            mtu = live_link(agent).max_packet
            own = address(agent, 6)
            big = udp6(own, str(INTERNET6), bytes(mtu + 1 - 48))
            assert len(big) == mtu + 1
            icmp = await answer_to_too_big(agent, big)
            info = parse_packet(icmp)
            assert info.version == 6
            assert info.proto == IPProto.ICMPV6
            assert str(info.src_address) == own and str(info.dst_address) == own
            assert (info.icmp_type, info.icmp_code) == (ICMPv6Type.PACKET_TOO_BIG, 0)
            message = icmp[40:]
            pseudo = icmp[8:40] + struct.pack("!I3xB", len(message), IPProto.ICMPV6)
            assert internet_checksum(message, ones_complement_sum(pseudo)) == 0
            # RFC 4443 §3.2: a 32-bit MTU, then as much of the packet as fits in 1280.
            assert struct.unpack("!I", message[4:8]) == (mtu,)
            assert message[8:] == big[: 1280 - 48]
            assert not relay.egress.drain()
        finally:
            await agent.stop()


# --------------------------------------------------------------------- queue_full


async def test_the_send_queue_is_bounded_and_drops_at_the_tail(engine: str, pki: Path) -> None:
    async with running_relay(pki) as relay:
        agent = await start_agent(
            relay, "alice", quic_engine=engine, datagram_queue=8, queue="fifo"
        )
        try:
            own = agent.address4
            before = drops(agent.metrics, "queue_full")
            # 64 packets the agent reads in one batch: it queues them all before it sends,
            # so the queue holds 8 and the other 56 are dropped.
            burst = [udp4(own, str(INTERNET), f"#{i:02}".encode()) for i in range(64)]
            for packet in burst:
                agent.device.inject(packet)
            await until(
                lambda: drops(agent.metrics, "queue_full") - before == 56,
                what="56 queue_full drops",
            )
            arrived = [await next_from(relay) for _ in range(8)]
            assert arrived == burst[:8]
            assert drops(agent.metrics, "not_connected") == 0
            assert drops(agent.metrics, "too_big") == 0
            # The queue drained: the next burst is sent again.
            agent.device.inject(burst[0])
            assert await next_from(relay) == burst[0]
            assert drops(agent.metrics, "queue_full") - before == 56
        finally:
            await agent.stop()


async def test_the_fq_codel_queue_is_bounded_and_drops_the_oldest(engine: str, pki: Path) -> None:
    async with running_relay(pki) as relay:
        agent = await start_agent(relay, "alice", quic_engine=engine, datagram_queue=8)
        try:
            own = agent.address4
            before = drops(agent.metrics, "queue_overflow")
            # One flow's 64 packets in one batch: the queue keeps 8, and it is the flow's
            # oldest that go (a fresh packet is worth more than a stale one).
            burst = [udp4(own, str(INTERNET), f"#{i:02}".encode()) for i in range(64)]
            for packet in burst:
                agent.device.inject(packet)
            await until(
                lambda: drops(agent.metrics, "queue_overflow") - before == 56,
                what="56 queue_overflow drops",
            )
            arrived = [await next_from(relay) for _ in range(8)]
            assert arrived == burst[56:]
            assert drops(agent.metrics, "queue_full") == 0
        finally:
            await agent.stop()


# ---------------------------------------------------------------------- fallback


class _NoDatagrams(ServerConnection):
    """A relay's CONNECT-IP layer without SETTINGS_H3_DATAGRAM: it offers no HTTP
    datagrams."""

    def __init__(self, quic: QuicConn, **kw: Any) -> None:
        super().__init__(quic, **{**kw, "datagrams": False})


@pytest.fixture
def no_datagrams(monkeypatch: pytest.MonkeyPatch) -> None:
    """Relays started in this test offer no HTTP datagrams (the relay has no setting for
    it: every zgate relay offers them)."""
    monkeypatch.setattr(zgate_relay.core, "ServerConnection", _NoDatagrams)


async def test_without_relay_datagrams_the_agent_falls_back_to_stream_mode(
    engine: str, pki: Path, no_datagrams: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with running_relay(pki) as relay:
        agent = await start_agent(relay, "alice", PacketMode.DATAGRAM, quic_engine=engine)
        try:
            assert agent.agent.settings.mode is PacketMode.DATAGRAM
            assert agent.agent.status()["mode"] == "stream"
            warnings = [
                r.getMessage()
                for r in caplog.records
                if r.name == "zgate.agent" and r.levelno == logging.WARNING
            ]
            assert warnings == ["relay offers no HTTP datagrams: falling back to stream mode"]
            assert [s.mode for s in relay.server.sessions] == [PacketMode.STREAM]
            # Packets flow both ways as capsules.
            own = agent.address4
            up = udp4(own, str(INTERNET), b"up")
            agent.device.inject(up)
            assert await next_from(relay) == up
            down = udp4(str(INTERNET), own, b"down", sport=7, dport=40000)
            relay.egress.inject(down)
            received = await agent.device.received()
            assert received[20:] == down[20:]  # the relay decremented the TTL
        finally:
            await agent.stop()


async def test_without_relay_datagrams_and_no_fallback_the_agent_says_so(
    engine: str, pki: Path, no_datagrams: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with running_relay(pki) as relay:
        agent = await start_agent(
            relay,
            "alice",
            PacketMode.DATAGRAM,
            quic_engine=engine,
            wait=False,
            fallback=False,
            backoff_initial=5.0,
        )
        try:
            expected = "the relay does not offer HTTP datagrams and fallback is off"
            await until(lambda: agent.agent.status()["last_error"] is not None, what="an error")
            status = agent.agent.status()
            assert status["last_error"] == expected
            assert status["state"] == "reconnecting"
            assert status["mode"] is None
            assert not agent.agent.connected.is_set()
            lines = [r.getMessage() for r in caplog.records if r.name == "zgate.agent"]
            assert f"tunnel down: {expected}" in lines
            assert relay.metrics.registry.get_sample_value("zgate_relay_sessions") == 0
        finally:
            await agent.stop()
