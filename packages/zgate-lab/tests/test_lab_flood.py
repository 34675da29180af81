"""The flood generator's Initials cost a real server what a real client's first datagram does."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from zgate_lab.flood import client_hello, forge_initials, open_client_initial, send_flood
from zgate_lab.harness import QUIC_ENGINES, make_pki, relay_server_config
from zgate_proto.engines import get_engine
from zgate_proto.quic_header import LongPacketType, parse_header, starts_connection


def test_forged_initials_are_distinct_well_formed_and_open_again() -> None:
    hello = client_hello()
    assert hello.frames[0] == 0x06  # a CRYPTO frame
    datagrams = forge_initials(20, hello)
    assert len({parse_header(d, 8).destination_cid for d in datagrams}) == 20
    for data in datagrams:
        header = parse_header(data, 8)
        assert header.packet_type is LongPacketType.INITIAL
        assert header.source_cid == hello.source_cid
        assert starts_connection(header, len(data)) and len(data) == 1200
        assert open_client_initial(data).rstrip(b"\x00") == hello.frames


@pytest.mark.parametrize("engine_name", QUIC_ENGINES)
def test_a_server_engine_takes_a_forged_initial_for_a_new_connection(
    engine_name: str, tmp_path: Path
) -> None:
    engine = get_engine(engine_name)
    config = relay_server_config(make_pki(tmp_path / "pki", []))
    [forged] = forge_initials(1)
    conn = engine.accept(config, forged, ("198.51.100.66", 5555), 1.0)
    assert conn is not None  # decrypted: a TLS handshake under way, state kept
    answer = conn.flush(1.0)
    assert answer  # its ServerHello and certificate, to the forged source


def test_a_flood_sends_every_datagram_at_the_rate() -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(2.0)
    try:
        result = send_flood(receiver.getsockname(), [b"x" * 100] * 200, rate=2000.0)
        assert result.sent == 200 and result.send_errors == 0
        got = sum(1 for _ in range(200) if receiver.recv(2048))
        assert got == 200
    finally:
        receiver.close()
