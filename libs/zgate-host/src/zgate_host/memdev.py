"""An in-memory stand-in for a TUN device, with a real fd for asyncio's add_reader."""

from __future__ import annotations

import asyncio
import errno
import socket
from types import TracebackType

from zgate_host.errors import HostError
from zgate_host.tun import MAX_PACKET

__all__ = ["MemoryPacketDevice"]


class MemoryPacketDevice:
    """A PacketDevice whose "kernel" is the test: a SOCK_SEQPACKET socketpair.

    The daemon side (fileno, read_batch, write) behaves like TunDevice: non-blocking, one
    message per packet, refused writes counted in `write_errors`. The kernel side is driven by
    the test: inject() is a packet the OS routed into the tunnel; received() and drain() return
    packets the daemon wrote.
    """

    def __init__(self, name: str = "mem0", *, mtu: int = 1400) -> None:
        self.name = name
        self.mtu = mtu
        self.write_errors = 0
        self.last_write_errno: int | None = None
        self._daemon, self._kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._daemon.setblocking(False)
        self._kernel.setblocking(False)
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once close() has run."""
        return self._closed

    # --- the daemon's side (the PacketDevice protocol) ---

    def fileno(self) -> int:
        """The daemon-side fd; readable when injected packets wait."""
        self._check_open()
        return self._daemon.fileno()

    def read_batch(self, max_packets: int = 64) -> list[bytes]:
        """Return the injected packets waiting now, at most `max_packets`; never blocks."""
        self._check_open()
        packets: list[bytes] = []
        while len(packets) < max_packets:
            try:
                packets.append(self._daemon.recv(MAX_PACKET))
            except BlockingIOError:
                break
        return packets

    def write(self, packet: bytes) -> None:
        """Deliver `packet` to the kernel side; counted and dropped if its queue is full."""
        self._check_open()
        try:
            self._daemon.send(packet)
        except OSError as exc:
            self.write_errors += 1
            self.last_write_errno = exc.errno

    def write_batch(self, packets: list[bytes]) -> None:
        """Deliver packets in order, one by one (no coalescing in memory)."""
        for packet in packets:
            self.write(packet)

    def close(self) -> None:
        """Close both sides; idempotent."""
        if not self._closed:
            self._closed = True
            self._daemon.close()
            self._kernel.close()

    # --- the kernel's side (driven by tests) ---

    def inject(self, packet: bytes) -> None:
        """Queue `packet` for the daemon, as if the OS had routed it into the tunnel.

        Raises HostError if the daemon has let the queue fill up (it is not reading).
        """
        self._check_open()
        try:
            self._kernel.send(packet)
        except BlockingIOError:
            raise HostError(
                f"{self.name}: the daemon is not reading; queue full", code=errno.EAGAIN
            ) from None

    def drain(self) -> list[bytes]:
        """Return every packet the daemon has written and nobody has taken yet."""
        self._check_open()
        packets: list[bytes] = []
        while True:
            try:
                packets.append(self._kernel.recv(MAX_PACKET))
            except BlockingIOError:
                return packets

    async def received(self, timeout: float = 5.0) -> bytes:
        """Wait for the next packet the daemon writes; TimeoutError after `timeout` seconds."""
        self._check_open()
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            return await loop.sock_recv(self._kernel, MAX_PACKET)

    def __enter__(self) -> MemoryPacketDevice:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MemoryPacketDevice(name={self.name!r}, mtu={self.mtu})"

    def _check_open(self) -> None:
        if self._closed:
            raise HostError(f"{self.name} is closed", code=errno.EBADF)
