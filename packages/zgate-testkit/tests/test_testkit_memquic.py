"""The in-memory QUIC fake (zgate_testkit.memquic) keeps the rules a real engine enforces."""

from __future__ import annotations

import pytest

from zgate_proto.engines.base import (
    ConnectionTerminated,
    DatagramReceived,
    SendStatus,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)
from zgate_testkit.memquic import MemoryLink, memory_pair


def test_memory_streams_arrive_in_order_and_in_pieces() -> None:
    client, server = memory_pair()
    link = MemoryLink(client, server)
    server.chunk = 3
    sid = client.next_stream_id()
    client.send_stream(sid, b"abcdefg")
    client.send_stream(sid, b"h", end_stream=True)
    assert client.next_stream_id() == sid + 4
    assert client.stream_backlog(sid) == 8
    link.exchange()
    assert client.stream_backlog(sid) == 0
    got = [(e.data, e.end_stream) for e in server.events if isinstance(e, StreamDataReceived)]
    assert got == [(b"abc", False), (b"def", False), (b"g", False), (b"h", True)]
    with pytest.raises(RuntimeError):
        client.send_stream(sid, b"late")


def test_memory_datagrams_can_be_lost_and_are_bounded() -> None:
    client, server = memory_pair(datagram_queue=2)
    link = MemoryLink(client, server)
    assert client.send_datagram(b"x" * 1201) is SendStatus.TOO_BIG
    assert client.send_datagram(b"1") is SendStatus.SENT
    assert client.send_datagram(b"2") is SendStatus.SENT
    assert client.send_datagram(b"3") is SendStatus.QUEUE_FULL
    link.lose_datagrams(True)
    link.exchange()
    assert not server.events
    link.lose_datagrams(False)
    client.send_datagram(b"4")
    link.exchange()
    assert list(server.events) == [DatagramReceived(b"4")]


def test_memory_stop_sending_resets_the_peers_side_and_close_reaches_the_peer() -> None:
    client, server = memory_pair()
    link = MemoryLink(client, server)
    sid = client.next_stream_id()
    client.send_stream(sid, b"x")
    link.exchange()
    server.stop_stream(sid, 7)
    link.exchange()
    assert list(client.events) == [StopSendingReceived(sid, 7)]
    link.exchange()
    assert StreamReset(sid, 7) in server.events
    client.close(0x100, "bye")
    link.exchange()
    assert server.events[-1] == ConnectionTerminated(0x100, "bye", True, True)
    assert client.events[-1] == ConnectionTerminated(0x100, "bye", False, True)
