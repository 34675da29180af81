"""The pump's fair ingress (zgate_host.pump with a zgate_proto.fq queue, as the relay runs
it) on real loopback UDP sockets: a quiet source's datagram is fed to the endpoint before a
busy source's backlog, and the order within one source is kept."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable, Iterator

import pytest

from zgate_host.pump import Pump
from zgate_proto.fq import FifoQueue, FqCodelQueue, PacketQueue

Address = tuple[object, ...]


class Recorder:
    """An endpoint that records what it is fed, in order."""

    def __init__(self) -> None:
        self.fed: list[bytes] = []
        self.arrived = asyncio.Event()
        self.expect = 0

    def datagram_received(self, data: bytes, addr: Address, now: float) -> None:
        self.fed.append(data)
        if len(self.fed) >= self.expect:
            self.arrived.set()

    def handle_timer(self, now: float) -> None:
        pass

    def flush(self, now: float) -> Iterable[tuple[bytes, Address]]:
        return []

    def deadline(self) -> float | None:
        return None


@pytest.fixture
def senders() -> Iterator[tuple[socket.socket, socket.socket]]:
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))
    yield a, b
    a.close()
    b.close()


async def feed_order(
    queue: PacketQueue[tuple[bytes, Address]] | None,
    senders: tuple[socket.socket, socket.socket],
    busy: int = 120,
) -> list[bytes]:
    """A sends ``busy`` datagrams, then B one, all before the pump reads; the order the
    endpoint was fed in."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    target = sock.getsockname()
    a, b = senders
    for i in range(busy):
        a.sendto(b"A%03d" % i + bytes(96), target)
    b.sendto(b"B" + bytes(99), target)
    recorder = Recorder()
    recorder.expect = busy + 1
    pump = Pump(
        sock, recorder, gso=False, gro=False, ingress=queue, ingress_budget=32, ingress_reads=128
    )
    try:
        await asyncio.wait_for(recorder.arrived.wait(), 10)
    finally:
        pump.close()
    return recorder.fed


async def test_a_quiet_source_goes_before_a_busy_ones_backlog(
    senders: tuple[socket.socket, socket.socket],
) -> None:
    fed = await feed_order(FqCodelQueue(1024), senders)
    assert len(fed) == 121
    where = next(i for i, d in enumerate(fed) if d.startswith(b"B"))
    # A's flow gets one quantum (1514 bytes: 15 of its 100-byte datagrams) before B's turn.
    assert where <= 16
    a_order = [d[:4] for d in fed if d.startswith(b"A")]
    assert a_order == [b"A%03d" % i for i in range(120)]


async def test_without_the_ingress_queue_it_waits_behind_the_backlog(
    senders: tuple[socket.socket, socket.socket],
) -> None:
    fed = await feed_order(None, senders)
    assert fed[-1].startswith(b"B")


async def test_a_fifo_ingress_queue_keeps_arrival_order(
    senders: tuple[socket.socket, socket.socket],
) -> None:
    fed = await feed_order(FifoQueue(1024), senders)
    assert fed[-1].startswith(b"B")
