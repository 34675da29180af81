"""Batched UDP I/O for the tunnel's QUIC sockets: GSO on send, GRO on receive (Linux).

Each ``sendto`` of a QUIC packet costs a trip through the whole kernel stack, and on a
veth or loopback path the receiver's side of that trip too; at tunnel rates it was a fifth
of the agent's CPU time. The kernel's UDP segmentation offload takes a run of equal-sized
datagrams to the same peer in one ``sendmsg`` (``UDP_SEGMENT``) and splits them late, and
UDP GRO (``UDP_GRO``) hands a receiver several datagrams of one peer in one ``recvmsg``
with their size, which :func:`split_gro` cuts apart again. Neither changes what is on the
wire: every datagram leaves as its own UDP packet.

Both are probed once per socket and turned off, for that socket, at the first error
(an interface without checksum offload answers GSO with EIO), so the worst case is the
plain one-call-per-datagram path.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "GSO_MAX_BYTES",
    "GSO_MAX_SEGMENTS",
    "BatchStats",
    "UdpBatchIO",
    "enable_gro",
    "gso_runs",
    "split_gro",
    "supports_gso",
]

log = logging.getLogger("zgate.udp")

SOL_UDP = 17
UDP_SEGMENT = 103  # linux/udp.h: send a buffer as datagrams of this size
UDP_GRO = 104  # linux/udp.h: receive several datagrams in one buffer
#: The kernel refuses more segments per send (UDP_MAX_SEGMENTS was 64 until Linux 6.7).
GSO_MAX_SEGMENTS = 64
#: One GSO send must fit one IP packet's length field.
GSO_MAX_BYTES = 65000
_U16 = struct.Struct("=H")
_INT = struct.Struct("=i")
_GRO_CMSG_SPACE = socket.CMSG_SPACE(_INT.size)
_RECV_SIZE = 65535

Address = Any  # what the socket module takes and gives: (host, port[, flow, scope])


def supports_gso(sock: socket.socket) -> bool:
    """Whether the kernel offers UDP segmentation offload on this socket."""
    try:
        sock.getsockopt(SOL_UDP, UDP_SEGMENT)
    except OSError:
        return False
    return True


def enable_gro(sock: socket.socket) -> bool:
    """Ask for UDP GRO on this socket; whether the kernel took it."""
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def gso_runs(
    datagrams: Sequence[tuple[bytes, Address]],
) -> list[tuple[list[bytes], int, Address]]:
    """Cut a list of (datagram, address) into GSO sends, in order: runs to one address whose
    datagrams all have the first one's size, except that the last may be shorter, bounded by
    GSO_MAX_SEGMENTS and GSO_MAX_BYTES. Each run is (datagrams, segment size, address)."""
    runs: list[tuple[list[bytes], int, Address]] = []
    current: list[bytes] = []
    size, addr, total, closed = 0, None, 0, True
    for data, to in datagrams:
        n = len(data)
        if (
            closed
            or to != addr
            or n > size
            or len(current) >= GSO_MAX_SEGMENTS
            or total + n > GSO_MAX_BYTES
        ):
            current = [data]
            runs.append((current, n, to))
            size, addr, total, closed = n, to, n, False
            continue
        current.append(data)
        total += n
        closed = n < size  # a shorter datagram ends its run
    return runs


def split_gro(data: bytes, segment: int) -> list[bytes]:
    """The datagrams of a GRO buffer whose datagrams are ``segment`` bytes (the last one
    may be shorter)."""
    if segment <= 0 or segment >= len(data):
        return [data]
    return [data[i : i + segment] for i in range(0, len(data), segment)]


@dataclass
class BatchStats:
    """What the batched socket did, for metrics and benchmarks."""

    send_calls: int = 0  # sendto/sendmsg calls
    datagrams_sent: int = 0
    send_dropped: int = 0  # datagrams lost to a full socket buffer (QUIC recovers them)
    recv_calls: int = 0
    datagrams_received: int = 0


class UdpBatchIO:
    """A non-blocking UDP socket read and written in batches.

    ``on_datagram(data, addr)`` is called for each datagram received; ``on_batch_end()``
    once per wake-up after them (where the caller sends what the batch produced).
    """

    def __init__(
        self,
        sock: socket.socket,
        on_datagram: Callable[[bytes, Address], None],
        on_batch_end: Callable[[], None] = lambda: None,
        *,
        batch: int = 256,
        gso: bool = True,
        gro: bool = True,
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.on_datagram = on_datagram
        self.on_batch_end = on_batch_end
        self.batch = batch
        self.gso = gso and supports_gso(sock)
        self.gro = gro and enable_gro(sock)
        self.stats = BatchStats()

    # ------------------------------------------------------------------ receiving

    def readable(self) -> None:
        """Read until the socket would block (at most ``batch`` reads), then end the batch."""
        try:
            self.drain()
        finally:
            self.on_batch_end()

    def drain(self, max_datagrams: int | None = None) -> None:
        """Hand every datagram waiting (at most ``batch`` reads, and with ``max_datagrams``
        about that many datagrams: a GRO read is not split across calls) to
        ``on_datagram``."""
        reads = self.batch
        if max_datagrams is not None:
            reads = min(reads, max_datagrams)
        if self.gro:
            self._read_gro(reads, max_datagrams)
        else:
            self._read_plain(reads)

    def _read_plain(self, reads: int) -> None:
        recv, handle, stats = self.sock.recvfrom, self.on_datagram, self.stats
        for _ in range(reads):
            try:
                data, addr = recv(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. an ICMP error reported on the socket
                log.debug("udp receive error", extra={"error": str(exc)})
                return
            stats.recv_calls += 1
            stats.datagrams_received += 1
            handle(data, addr)

    def _read_gro(self, reads: int, max_datagrams: int | None) -> None:
        recv, handle, stats = self.sock.recvmsg, self.on_datagram, self.stats
        stop = None if max_datagrams is None else stats.datagrams_received + max_datagrams
        for _ in range(reads):
            if stop is not None and stats.datagrams_received >= stop:
                return
            try:
                data, ancillary, _flags, addr = recv(_RECV_SIZE, _GRO_CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("udp receive error", extra={"error": str(exc)})
                return
            stats.recv_calls += 1
            segment = 0
            for level, kind, cdata in ancillary:
                if level == SOL_UDP and kind == UDP_GRO and len(cdata) >= _INT.size:
                    segment = _INT.unpack_from(cdata)[0]
            if segment and segment < len(data):
                parts = split_gro(data, segment)
                stats.datagrams_received += len(parts)
                for part in parts:
                    handle(part, addr)
            else:
                stats.datagrams_received += 1
                handle(data, addr)

    # -------------------------------------------------------------------- sending

    def sendto(self, data: bytes, addr: Address) -> None:
        """Send one datagram; a full socket buffer drops it (counted)."""
        self.stats.send_calls += 1
        try:
            self.sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            self.stats.send_dropped += 1
            return
        except OSError as exc:
            log.debug("udp send error", extra={"error": str(exc)})
            return
        self.stats.datagrams_sent += 1

    def send_many(self, datagrams: Iterable[tuple[bytes, Address]]) -> None:
        """Send datagrams in order, runs of equal size to one peer in one GSO call."""
        batch = datagrams if isinstance(datagrams, list) else list(datagrams)
        if not self.gso or len(batch) < 2:
            for data, addr in batch:
                self.sendto(data, addr)
            return
        for run, segment, addr in gso_runs(batch):
            if len(run) == 1:
                self.sendto(run[0], addr)
            else:
                self._send_gso(run, segment, addr)

    def _send_gso(self, run: list[bytes], segment: int, addr: Address) -> None:
        stats = self.stats
        stats.send_calls += 1
        try:
            self.sock.sendmsg(
                [b"".join(run)], [(SOL_UDP, UDP_SEGMENT, _U16.pack(segment))], 0, addr
            )
        except (BlockingIOError, InterruptedError):
            stats.send_dropped += len(run)
            return
        except OSError as exc:
            if exc.errno in (errno.EIO, errno.EINVAL, errno.EOPNOTSUPP):
                # The route's device cannot segment UDP: plain sends from now on.
                log.warning(
                    "UDP GSO refused, sending datagrams one by one", extra={"error": str(exc)}
                )
                self.gso = False
                stats.send_calls -= 1
                for data in run:
                    self.sendto(data, addr)
                return
            log.debug("udp send error", extra={"error": str(exc)})
            return
        stats.datagrams_sent += len(run)

    def get_extra_info(self, name: str) -> Any:
        """What an asyncio transport would say (aioquic asks for the socket's name)."""
        if name == "socket":
            return self.sock
        if name == "sockname":
            return self.sock.getsockname()
        return None

    def close(self) -> None:
        self.sock.close()
