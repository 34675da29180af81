"""The one pump shape for relay, agent and connector: drain the UDP socket, feed the sans-IO
endpoint, let it route, flush once, re-arm one timer.

The pump makes no decision. Everything else that wakes the endpoint (a TUN device becoming
readable, a keep-alive, a stop) calls the endpoint and then :meth:`Pump.wake`, which sends
what the endpoint has to send and re-arms the timer, once per wake-up.

With an ``ingress`` queue (the relay: one socket shared by every agent) each turn reads
about ``ingress_reads`` datagrams into that queue, keyed by each datagram's source, feeds the
endpoint at most ``ingress_budget`` of them, flushes, and leaves the rest for the next turn of
the event loop (which reads the socket again first). Reading is cheap next to decrypting and
routing, and a turn reads several times what it processes, so the standing backlog moves
from the kernel's one FIFO into per-source queues where a quiet agent's packets go first
and a flooding one's wait (and, under CoDel or past the limit, are dropped before they cost a
decryption); the device readers and timers get their turns in between. Reads per turn stay
bounded: reading everything the kernel holds (thousands of GRO segments) made one turn
longer than the delay it was meant to save.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar

from zgate_host.sockets import enlarge_udp_buffers
from zgate_host.udp import UdpBatchIO

__all__ = ["Endpoint", "IngressQueue", "Pump"]

Address = tuple[Any, ...]
T = TypeVar("T")


class IngressQueue(Protocol[T]):
    """A queue discipline for what waits to be processed (zgate_proto.fq's queues)."""

    def push(self, item: T, size: int, flow: int, now: float | None) -> bool:
        """Queue one item of ``flow`` (it, or another flow's, may be dropped)."""

    def pop(self, now: float) -> T | None:
        """The next item to process (None: empty)."""

    def __len__(self) -> int:
        """Items waiting."""


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
        ingress: IngressQueue[tuple[bytes, Address]] | None = None,
        ingress_budget: int = 64,
        ingress_reads: int = 256,
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
        self.ingress = ingress
        self.ingress_budget = ingress_budget
        self.ingress_reads = ingress_reads
        self._turn_due = False
        self._add_reader(sock.fileno(), self._readable)

    # ------------------------------------------------------------------- inputs

    def _readable(self) -> None:
        self._now = self.clock()
        if self.ingress is None:
            self.io.readable()  # ends the batch with wake()
            return
        self.io.drain(self.ingress_reads)
        self._serve()

    def _received(self, data: bytes, addr: Address) -> None:
        if self.ingress is not None:
            self.ingress.push((data, addr), len(data), hash(addr), self._now)
            return
        self.endpoint.datagram_received(data, addr, self._now)

    def _serve(self) -> None:
        """Feed the endpoint one budget of queued datagrams, flush, and come back on the
        loop's next turn while any are left."""
        queue = self.ingress
        assert queue is not None
        now = self.clock()
        feed = self.endpoint.datagram_received
        # Short turns even for one source alone: the next source's first datagram (a
        # ping) arrives while a turn runs, and waits for its end. Measured: big turns for
        # a source alone saved relay CPU but lost most of the gain for B's RTT.
        for _ in range(self.ingress_budget):
            item = queue.pop(now)
            if item is None:
                break
            feed(item[0], item[1], now)
        self.wake()
        if len(queue) and not self._turn_due:
            self._turn_due = True
            self.loop.call_soon(self._next_turn)

    def _next_turn(self) -> None:
        self._turn_due = False
        if self._closed:
            return
        self._now = self.clock()
        self.io.drain(self.ingress_reads)  # what arrived meanwhile joins its queue first
        self._serve()

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
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

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
