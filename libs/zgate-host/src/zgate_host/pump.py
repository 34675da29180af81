"""The one pump shape for relay, agent and connector: drain the UDP socket, feed the sans-IO
endpoint, let it route, flush once, re-arm one timer.

The pump makes no decision. Everything else that wakes the endpoint (a TUN device becoming
readable, a keep-alive, a stop) calls the endpoint and then :meth:`Pump.wake`, which sends
what the endpoint has to send and re-arms the timer, once per wake-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from zgate_host.sockets import enlarge_udp_buffers
from zgate_host.udp import UdpBatchIO

__all__ = ["Endpoint", "Pump"]

Address = tuple[Any, ...]


class Endpoint(Protocol):
    """What the pump drives: a sans-IO QUIC endpoint (the relay's core, an agent's link)."""

    def datagram_received(self, data: bytes, addr: Address, now: float) -> None:
        """One UDP payload from the network."""

    def handle_timer(self, now: float) -> None:
        """The time from :meth:`deadline` has come."""

    def flush(self, now: float) -> Iterable[tuple[bytes, Address]]:
        """UDP payloads to send now (called once per wake-up, after the inputs)."""

    def deadline(self) -> float | None:
        """When the endpoint wants :meth:`handle_timer` next (the pump's clock)."""


class Pump:
    """Moves UDP datagrams between a socket and an :class:`Endpoint` on an asyncio loop."""

    def __init__(
        self,
        sock: socket.socket,
        endpoint: Endpoint,
        *,
        clock: Callable[[], float] | None = None,
        gso: bool = True,
        gro: bool = True,
        batch: int = 256,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.clock = clock or self.loop.time
        self.endpoint = endpoint
        enlarge_udp_buffers(sock)
        self.io = UdpBatchIO(sock, self._received, self.wake, batch=batch, gso=gso, gro=gro)
        self._now = self.clock()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._readers: list[int] = []
        self._closed = False
        self._add_reader(sock.fileno(), self._readable)

    # ------------------------------------------------------------------- inputs

    def _readable(self) -> None:
        self._now = self.clock()
        self.io.readable()  # ends the batch with wake()

    def _received(self, data: bytes, addr: Address) -> None:
        self.endpoint.datagram_received(data, addr, self._now)

    def add_device(self, fd: int, on_readable: Callable[[], None]) -> None:
        """Watch another file descriptor (a TUN device): ``on_readable`` feeds the endpoint,
        then the pump flushes."""

        def readable() -> None:
            on_readable()
            self.wake()

        self._add_reader(fd, readable)

    def _add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self.loop.add_reader(fd, callback)
        self._readers.append(fd)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.endpoint.handle_timer(self.clock())
        self.wake()

    # ------------------------------------------------------------------ output

    def wake(self) -> None:
        """Send what the endpoint has to send now, and re-arm the timer."""
        if self._closed:
            return
        now = self.clock()
        self.io.send_many(self.endpoint.flush(now))
        at = self.endpoint.deadline()
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None:
            self._timer = self.loop.call_at(at, self._on_timer)

    @property
    def now(self) -> float:
        """The pump's clock."""
        return self.clock()

    def sockname(self) -> Address:
        """The bound address of the UDP socket."""
        name: Address = self.io.sock.getsockname()
        return name

    def close(self) -> None:
        """Stop reading and timing, and close the socket (flush first if needed)."""
        if self._closed:
            return
        self._closed = True
        for fd in self._readers:
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(fd)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.io.close()
