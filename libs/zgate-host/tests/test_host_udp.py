"""Batched UDP I/O: GSO runs, GRO splitting, and real loopback sockets."""

from __future__ import annotations

import errno
import select
import socket
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zgate_host.udp import (
    GSO_MAX_BYTES,
    GSO_MAX_SEGMENTS,
    UdpBatchIO,
    enable_gro,
    gso_runs,
    split_gro,
    supports_gso,
)

A = ("127.0.0.1", 1000)
B = ("127.0.0.1", 2000)

datagrams = st.lists(
    st.tuples(
        st.integers(1, 1500).map(lambda n: bytes([n % 251]) * n),
        st.sampled_from([A, B]),
    ),
    max_size=200,
)


@given(datagrams)
def test_gso_runs_keep_order_and_obey_the_kernels_rules(batch: list[tuple[bytes, Any]]) -> None:
    runs = gso_runs(batch)
    flat = [(data, addr) for run, _size, addr in runs for data in run]
    assert flat == batch
    for run, size, _addr in runs:
        assert len(run) <= GSO_MAX_SEGMENTS
        assert sum(map(len, run)) <= GSO_MAX_BYTES
        assert all(len(d) == size for d in run[:-1])
        assert len(run[-1]) <= size


def test_gso_runs_join_equal_sizes_and_end_at_a_shorter_one() -> None:
    batch = [(b"x" * 1400, A)] * 5 + [(b"y" * 100, A), (b"z" * 1400, A), (b"w" * 1400, B)]
    runs = gso_runs(batch)
    assert [(len(run), size, addr) for run, size, addr in runs] == [
        (6, 1400, A),
        (1, 1400, A),
        (1, 1400, B),
    ]


def test_gso_runs_split_at_the_segment_bound() -> None:
    runs = gso_runs([(b"x" * 100, A)] * (GSO_MAX_SEGMENTS + 1))
    assert [len(run) for run, _, _ in runs] == [GSO_MAX_SEGMENTS, 1]


@given(st.binary(min_size=1, max_size=5000), st.integers(1, 1500))
def test_split_gro_undoes_concatenation(data: bytes, segment: int) -> None:
    parts = split_gro(data, segment)
    assert b"".join(parts) == data
    assert all(len(p) == segment for p in parts[:-1])
    assert 0 < len(parts[-1]) <= segment


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    tx.bind(("127.0.0.1", 0))
    yield rx, tx
    rx.close()
    tx.close()


def _receive(io: UdpBatchIO, got: list[bytes], want: int) -> None:
    """Drain until ``want`` datagrams arrived (each wait bounded by poll's timeout)."""
    while len(got) < want:
        ready, _, _ = select.select([io.sock], [], [], 5)
        assert ready, f"only {len(got)} of {want} datagrams arrived"
        io.readable()


@pytest.mark.parametrize("offload", [True, False], ids=["gso-gro", "plain"])
def test_loopback_batches_arrive_whole_and_in_order(
    pair: tuple[socket.socket, socket.socket], offload: bool
) -> None:
    rx_sock, tx_sock = pair
    got: list[bytes] = []
    ends: list[int] = []
    rx = UdpBatchIO(
        rx_sock, lambda data, addr: got.append(data), lambda: ends.append(1), gro=offload
    )
    tx = UdpBatchIO(tx_sock, lambda data, addr: None, gso=offload)
    to = rx_sock.getsockname()
    batch = [(bytes([i]) * 1200, to) for i in range(20)] + [(b"tail", to)]
    tx.send_many(batch)
    _receive(rx, got, len(batch))
    assert got == [data for data, _ in batch]
    assert tx.stats.datagrams_sent == rx.stats.datagrams_received == len(batch)
    assert ends, "on_batch_end was never called"
    if offload and supports_gso(tx_sock):
        assert tx.stats.send_calls == 1  # the whole run in one sendmsg
    else:
        assert tx.stats.send_calls == len(batch)


def test_gro_coalesced_reads_are_split(
    pair: tuple[socket.socket, socket.socket], skip_or_fail: Callable[[str], NoReturn]
) -> None:
    rx_sock, tx_sock = pair
    if not (supports_gso(tx_sock) and enable_gro(rx_sock)):
        skip_or_fail("this kernel has no UDP GSO/GRO")
    got: list[bytes] = []
    rx = UdpBatchIO(rx_sock, lambda data, addr: got.append(data))
    tx = UdpBatchIO(tx_sock, lambda data, addr: None)
    to = rx_sock.getsockname()
    batch = [(bytes([i]) * 1000, to) for i in range(10)]
    tx.send_many(batch)
    _receive(rx, got, len(batch))
    assert got == [data for data, _ in batch]
    # Loopback hands the GSO send to the GRO socket as one buffer.
    assert rx.stats.recv_calls < rx.stats.datagrams_received


class _RefusingSocket:
    """A socket whose device cannot segment: sendmsg fails with EIO (seen on some NICs)."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def setblocking(self, flag: bool) -> None:
        pass

    def getsockopt(self, *args: object) -> int:
        return 0

    def setsockopt(self, *args: object) -> None:
        pass

    def sendmsg(self, *args: object) -> int:
        raise OSError(errno.EIO, "Input/output error")

    def sendto(self, data: bytes, addr: object) -> int:
        self.sent.append(data)
        return len(data)


def test_gso_refused_falls_back_to_plain_sends_for_good() -> None:
    sock = _RefusingSocket()
    io = UdpBatchIO(sock, lambda data, addr: None)  # type: ignore[arg-type]
    assert io.gso
    batch = [(b"x" * 500, A)] * 4
    io.send_many(batch)
    assert not io.gso
    assert sock.sent == [b"x" * 500] * 4
    io.send_many(batch)
    assert len(sock.sent) == 8
    assert io.stats.datagrams_sent == 8


class _FullSocket(_RefusingSocket):
    def sendmsg(self, *args: object) -> int:
        raise BlockingIOError(errno.EAGAIN, "would block")


def test_full_send_buffer_drops_and_counts() -> None:
    io = UdpBatchIO(_FullSocket(), lambda data, addr: None)  # type: ignore[arg-type]
    io.send_many([(b"x" * 500, A)] * 4)
    assert io.stats.send_dropped == 4
    assert io.stats.datagrams_sent == 0
