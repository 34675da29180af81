"""Agent and relay in one process over loopback QUIC, in-memory devices for TUN; once per
QUIC engine of the relay. Where a test needs a client to misbehave it uses a RawClient (an
engine and the session core, no agent)."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import pytest

from zgate_lab.harness import (
    INTERNET,
    QUIC_ENGINES,
    RawClient,
    RelayUnderTest,
    make_pki,
    running_relay,
    start_agent,
    udp4,
    until,
)
from zgate_pki import revoke_certificate
from zgate_proto.capsules import CapsuleType
from zgate_proto.ip import parse_packet
from zgate_proto.session import ClientState, PacketMode
from zgate_proto.varint import encode_varint

#: Every test runs once per QUIC engine of the relay.
pytestmark = pytest.mark.parametrize("engine", QUIC_ENGINES)

MODES = [PacketMode.DATAGRAM, PacketMode.STREAM]


def status_sessions(relay: RelayUnderTest) -> list[dict[str, object]]:
    """The sessions of the relay's /status snapshot."""
    sessions = relay.server.status()["sessions"]
    assert isinstance(sessions, list)
    return sessions


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    return make_pki(tmp_path / "pki", [f"c{i}" for i in range(22)] + ["alice", "bob"])


@pytest.mark.parametrize("mode", MODES)
async def test_packets_cross_the_tunnel_both_ways(pki: Path, engine: str, mode: PacketMode) -> None:
    async with running_relay(pki, engine=engine) as relay:
        agent = await start_agent(relay, "alice", mode)
        try:
            assert agent.agent.mode is mode
            src = agent.address4
            assert ipaddress.IPv4Address(src) in ipaddress.IPv4Network("10.100.0.0/16")
            out = udp4(src, str(INTERNET), b"hello internet")
            agent.device.inject(out)
            assert await relay.egress.received(timeout=5) == out
            back = udp4(str(INTERNET), src, b"hello agent", sport=7, dport=40000)
            relay.egress.inject(back)
            assert await agent.device.received(timeout=5) == back
            assert relay.metrics.packets["from_agent"] == 1
            assert relay.metrics.packets["to_agent"] == 1
            sessions = status_sessions(relay)
            assert [s["client"] for s in sessions] == ["client/alice"]
            assert sessions[0]["mode"] == mode.value
        finally:
            await agent.stop()
        await until(lambda: relay.server.sessions == [], what="the session to close")
        assert relay.metrics.sessions._value.get() == 0


async def test_spoofed_source_is_dropped_and_counted(pki: Path, engine: str) -> None:
    async with running_relay(pki, engine=engine) as relay:
        agent = await start_agent(relay, "alice")
        try:
            agent.device.inject(udp4("10.100.77.77", str(INTERNET), b"spoofed"))
            agent.device.inject(udp4(agent.address4, str(INTERNET), b"genuine"))
            got = await relay.egress.received(timeout=5)
            assert b"genuine" in got
            assert relay.metrics.drops["spoofed_source"] == 1
            assert relay.egress.drain() == []
        finally:
            await agent.stop()


async def test_twenty_sessions_at_once_are_routed_to_each_other(pki: Path, engine: str) -> None:
    async with running_relay(pki, engine=engine) as relay:
        agents = [await start_agent(relay, f"c{i}", MODES[i % 2]) for i in range(20)]
        try:
            addresses = [a.address4 for a in agents]
            assert len(set(addresses)) == 20
            # Each agent sends one packet to the next one; each must receive exactly it.
            for i, a in enumerate(agents):
                dst = addresses[(i + 1) % 20]
                a.device.inject(udp4(addresses[i], dst, f"from {i}".encode()))
            for i, a in enumerate(agents):
                got = await a.device.received(timeout=5)
                info = parse_packet(got)
                assert info.dst == ipaddress.IPv4Address(addresses[i]).packed
                assert got.endswith(f"from {(i - 1) % 20}".encode())
                assert got[8] == 63  # TTL decremented by the relay hop
            assert len(relay.server.sessions) == 20
        finally:
            for a in agents:
                await a.stop()


async def test_malformed_capsule_ends_only_that_session(pki: Path, engine: str) -> None:
    async with running_relay(pki, engine=engine) as relay:
        good = await start_agent(relay, "alice", PacketMode.STREAM)
        bad = await RawClient(relay, "bob", PacketMode.STREAM).start()
        try:
            # A DATAGRAM capsule whose declared length is far beyond the relay's maximum.
            oversized = encode_varint(CapsuleType.DATAGRAM) + encode_varint(1 << 30) + b"\x00"
            bad.session.h3.send_data(bad.session.stream_id, oversized)
            bad.wake()
            await until(lambda: bad.session.state is ClientState.CLOSED, what="bob's end")
            assert relay.metrics.session_errors._value.get() == 1
            # The other session is untouched.
            out = udp4(good.address4, str(INTERNET), b"still here")
            good.device.inject(out)
            assert await relay.egress.received(timeout=5) == out
            assert [s["client"] for s in status_sessions(relay)] == ["client/alice"]
        finally:
            await good.stop()
            await bad.stop()


async def test_garbage_datagrams_are_dropped_and_counted(pki: Path, engine: str) -> None:
    async with running_relay(pki, engine=engine) as relay:
        client = await RawClient(relay, "alice").start()
        try:
            quarter = client.session.stream_id // 4
            quic = client.quic
            quic.send_datagram(encode_varint(quarter) + b"\x05junk")  # context 5
            quic.send_datagram(encode_varint(quarter + 100) + b"\x00junk")  # no such stream
            quic.send_datagram(encode_varint(quarter) + b"\x00\x99garbage")  # not IP
            client.wake()
            out = udp4(client.address4, str(INTERNET), b"after garbage")
            client.send_packet(out)
            assert await relay.egress.received(timeout=5) == out
            drops = relay.metrics.drops
            assert drops["unknown_context"] == 1
            assert drops["unknown_stream"] == 1
            assert drops["malformed_packet"] == 1
        finally:
            await client.stop()


async def test_revoked_client_is_disconnected_and_refused(pki: Path, engine: str) -> None:
    async with running_relay(pki, engine=engine) as relay:
        agent = await start_agent(relay, "alice")
        try:
            revoke_certificate(pki, "alice")
            assert relay.server.check_revocations() == 1
            await until(lambda: relay.server.sessions == [], what="the session to end")
            assert relay.metrics.refusals["revoked"]._value.get() >= 1
            # It cannot come back: its next handshakes are refused as revoked.
            before = relay.metrics.refusals["revoked"]._value.get()
            for _ in range(200):
                if relay.metrics.refusals["revoked"]._value.get() > before:
                    break
                await asyncio.sleep(0.05)
            assert relay.metrics.refusals["revoked"]._value.get() > before
            assert not agent.agent.connected.is_set()
            # The agent tells its operator why.
            await until(lambda: "revoked" in str(agent.agent.status()["last_error"]))
        finally:
            await agent.stop()


async def test_agent_reconnects_after_relay_restart(pki: Path, engine: str) -> None:
    async with running_relay(pki, engine=engine) as relay:
        port = relay.port
        agent = await start_agent(relay, "alice")
    try:
        # The relay is gone; start a new one on the same port.
        async with running_relay(pki, port=port, engine=engine) as relay2:
            assert relay2.server is not relay.server
            await asyncio.wait_for(_reconnected(agent), 30)
            out = udp4(agent.address4, str(INTERNET), b"again")
            agent.device.inject(out)
            assert await relay2.egress.received(timeout=5) == out
    finally:
        await agent.stop()


async def _reconnected(agent: object) -> None:
    a = agent.agent  # type: ignore[attr-defined]
    while not (a.connected.is_set() and a.status()["attempts"] > 1):
        await asyncio.sleep(0.05)
