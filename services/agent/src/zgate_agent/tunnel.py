"""One tunnel attempt: a QUIC connection to the relay carrying one CONNECT-IP session.

:class:`TunnelProtocol` is aioquic's asyncio protocol plus the HTTP/3 and CONNECT-IP layer;
it opens the session, then hands every IP packet from the relay to ``on_packet``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.events import DatagramReceived, DataReceived, H3Event, HeadersReceived
from aioquic.quic.connection import QuicConnectionState
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, QuicEvent, StreamReset

from zgate_agent.failures import CloseInfo
from zgate_host.udp import UdpBatchIO
from zgate_proto.capsules import AddressAssign, DatagramCapsule, IPAddressRange, RouteAdvertisement
from zgate_proto.errors import DecodeError, ProtoError
from zgate_proto.h3 import MODE_HEADER, ConnectIpH3Connection, ConnectIpStream, PacketMode
from zgate_proto.request import build_connect_ip_request, validate_connect_ip_response

__all__ = ["TunnelError", "TunnelInfo", "TunnelProtocol"]

log = logging.getLogger("zgate.agent")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


_DRAIN_BATCH = 255


class TunnelError(Exception):
    """The tunnel could not be opened or was lost; the message says why. ``permanent``:
    retrying cannot help until someone fixes a file or the relay's PKI."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True, slots=True)
class TunnelInfo:
    """What the relay told us when the session opened."""

    addresses: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    routes: tuple[IPAddressRange, ...]
    mode: PacketMode


class TunnelProtocol(QuicConnectionProtocol):
    """aioquic connection protocol speaking CONNECT-IP as the client."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.h3 = ConnectIpH3Connection(self._quic)
        self.stream: ConnectIpStream | None = None
        self.on_packet: Callable[[bytes], None] = lambda packet: None
        self.on_unknown_context: Callable[[], None] = lambda: None
        #: Called before every transmit: after each batch of datagrams has been handled,
        #: and after a timer, the only two ways packets from the relay come in.
        self.on_batch_end: Callable[[], None] = lambda: None
        #: Set as soon as the connection is closing (by either side), not only once
        #: aioquic has finished its closing period.
        self.terminated = asyncio.Event()
        self.close_reason = ""
        #: How it closed, once ``terminated`` is set (None after a local _lost()).
        self.close_info: CloseInfo | None = None
        #: Our side of the TLS handshake completed (the relay may still refuse us).
        self.handshake_done = asyncio.Event()
        self._settings = asyncio.Event()
        self._response: asyncio.Future[list[tuple[bytes, bytes]]] | None = None
        self._assigned: asyncio.Future[AddressAssign] | None = None
        self._routes: asyncio.Future[RouteAdvertisement] | None = None
        self.addresses: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
        self.routes: tuple[IPAddressRange, ...] = ()
        #: Send with UDP GSO where the kernel has it (set before the connection is made).
        self.udp_offload = True
        self._io: UdpBatchIO | None = None

    # ------------------------------------------------------------------ opening

    async def open_session(
        self, authority: str, mode: PacketMode, *, fallback: bool, max_queued: int, timeout: float
    ) -> TunnelInfo:
        """Send the extended CONNECT and wait for 2xx, ADDRESS_ASSIGN and ROUTE_ADVERTISEMENT."""
        loop = asyncio.get_running_loop()
        await self._wait(self._settings.wait(), timeout, "the relay's HTTP/3 SETTINGS")
        if not self.h3.peer_supports_extended_connect():
            raise TunnelError("the relay does not offer extended CONNECT (RFC 9220)")
        if mode is PacketMode.DATAGRAM and not self.h3.peer_supports_datagrams():
            if not fallback:
                raise TunnelError("the relay does not offer HTTP datagrams and fallback is off")
            log.warning("relay offers no HTTP datagrams: falling back to stream mode")
            mode = PacketMode.STREAM
        stream_id = self._quic.get_next_available_stream_id()
        self._response = loop.create_future()
        self._assigned = loop.create_future()
        self._routes = loop.create_future()
        self.stream = ConnectIpStream(self.h3, stream_id, mode, max_queued=max_queued)
        headers = build_connect_ip_request(
            authority, extra_headers=[(MODE_HEADER, mode.value.encode())]
        )
        self.h3.send_headers(stream_id, headers, end_stream=False)
        self.transmit()
        response = await self._wait(self._response, timeout, "the relay's answer")
        try:
            validate_connect_ip_response(response)
        except ProtoError as exc:
            raise TunnelError(f"the relay refused the CONNECT-IP request: {exc}") from exc
        assign = await self._wait(self._assigned, timeout, "ADDRESS_ASSIGN")
        routes = await self._wait(self._routes, timeout, "ROUTE_ADVERTISEMENT")
        self.addresses = tuple(a.prefix for a in assign.addresses)
        self.routes = routes.ranges
        return TunnelInfo(self.addresses, self.routes, mode)

    async def _wait(self, awaitable: Any, timeout: float, what: str) -> Any:
        waiter = asyncio.ensure_future(awaitable)
        closed = asyncio.ensure_future(self.terminated.wait())
        try:
            done, _ = await asyncio.wait(
                {waiter, closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            closed.cancel()
            if not waiter.done():
                waiter.cancel()
        if waiter in done:
            return waiter.result()
        if self.terminated.is_set():
            raise TunnelError(f"connection closed while waiting for {what}: {self.close_reason}")
        raise TunnelError(f"timed out after {timeout:g}s waiting for {what}")

    # ---------------------------------------------------------------- receiving

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep a second handle on the UDP socket, to drain it (see datagram_received) and
        to send in GSO batches (see transmit)."""
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            dup = socket.fromfd(sock.fileno(), sock.family, sock.type)
            # No GRO: asyncio's own reads (the first datagram of each wake-up) must get
            # one datagram each.
            self._io = UdpBatchIO(
                dup, self._receive, batch=_DRAIN_BATCH, gso=self.udp_offload, gro=False
            )

    def _note_close(self) -> None:
        """Notice a close as soon as aioquic records it: aioquic reports a close it starts
        itself (say, our TLS stack refusing the relay's certificate) only after a closing
        period of three probe timeouts, seconds when the path is slow."""
        if self.terminated.is_set():
            return
        event = self._quic._close_event
        if event is None:
            return
        tls = getattr(self._quic, "tls", None)
        self.close_info = CloseInfo(
            error_code=event.error_code,
            reason=event.reason_phrase,
            by_peer=self._quic._state is QuicConnectionState.DRAINING,
            handshake_done=self.handshake_done.is_set(),
            peer_certificate=getattr(tls, "_peer_certificate", None),
        )
        self.close_reason = event.reason_phrase or f"error 0x{event.error_code:x}"
        self.terminated.set()

    def _handle_timer(self) -> None:
        super()._handle_timer()
        self._note_close()

    def connection_lost(self, exc: Exception | None) -> None:
        """Release the second handle with the transport."""
        if self._io is not None:
            self._io.close()
            self._io = None
        super().connection_lost(exc)

    def _receive(self, data: bytes, addr: Any) -> None:
        self._quic.receive_datagram(data, addr, now=self._loop.time())

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        """Handle the datagram asyncio read, then every other one already waiting, and
        send once: asyncio hands over one datagram per loop iteration, and aioquic's
        protocol would build and send its output (ACKs) after each."""
        self._receive(cast(bytes, data), addr)
        if self._io is not None:
            self._io.drain()
        self._process_events()
        self._note_close()
        self.transmit()

    def transmit(self) -> None:
        """Hand over the packets the relay sent (``on_batch_end``), then send what QUIC has
        to send, runs of equal-sized packets in one GSO call, and re-arm the timer
        (aioquic's transmit, batched)."""
        self.on_batch_end()
        io = self._io
        if io is None:
            super().transmit()
            return
        self._transmit_task = None
        io.send_many(self._quic.datagrams_to_send(now=self._loop.time()))
        timer_at = self._quic.get_timer()
        if self._timer is not None and self._timer_at != timer_at:
            self._timer.cancel()
            self._timer = None
        if self._timer is None and timer_at is not None:
            self._timer = self._loop.call_at(timer_at, self._handle_timer)
        self._timer_at = timer_at

    # ------------------------------------------------------------------- events

    def quic_event_received(self, event: QuicEvent) -> None:
        """Dispatch QUIC events (called by aioquic for every event)."""
        if isinstance(event, ConnectionTerminated):
            self._note_close()
            return
        if isinstance(event, HandshakeCompleted):
            self.handshake_done.set()
        stream = self.stream
        if (
            isinstance(event, StreamReset)
            and stream is not None
            and event.stream_id == stream.stream_id
        ):
            self._lost(f"the relay reset the CONNECT-IP stream (error 0x{event.error_code:x})")
            return
        for h3_event in self.h3.handle_event(event):
            self._h3_event(h3_event)
        if not self._settings.is_set() and self.h3.peer_settings_received:
            self._settings.set()

    def _h3_event(self, event: H3Event) -> None:
        stream = self.stream
        if stream is None:
            return
        if isinstance(event, DatagramReceived):
            if event.stream_id == stream.stream_id:
                try:
                    packet = ConnectIpStream.ip_packet_from_datagram(event.data)
                except DecodeError:
                    packet = None
                if packet is None:
                    self.on_unknown_context()
                else:
                    self.on_packet(packet)
        elif isinstance(event, HeadersReceived) and event.stream_id == stream.stream_id:
            if self._response is not None and not self._response.done():
                self._response.set_result(event.headers)
            if event.stream_ended:
                self._lost("the relay ended the CONNECT-IP stream")
        elif isinstance(event, DataReceived) and event.stream_id == stream.stream_id:
            self._stream_data(stream, event)

    def _stream_data(self, stream: ConnectIpStream, event: DataReceived) -> None:
        try:
            received = stream.receive_data(event.data, event.stream_ended)
        except DecodeError as exc:
            self._lost(f"malformed capsule from the relay: {exc}")
            return
        for capsule in received.capsules:
            if isinstance(capsule, DatagramCapsule):
                packet = ConnectIpStream.ip_packet_from_capsule(capsule)
                if packet is None:
                    self.on_unknown_context()
                else:
                    self.on_packet(packet)
            elif isinstance(capsule, AddressAssign):
                if self._assigned is not None and not self._assigned.done():
                    self._assigned.set_result(capsule)
                else:
                    self.addresses = tuple(a.prefix for a in capsule.addresses)
            elif isinstance(capsule, RouteAdvertisement):
                if self._routes is not None and not self._routes.done():
                    self._routes.set_result(capsule)
                else:
                    self.routes = capsule.ranges
        if received.ended:
            self._lost("the relay ended the CONNECT-IP stream")

    def _lost(self, reason: str) -> None:
        log.warning("tunnel lost", extra={"reason": reason})
        self.close_reason = reason
        self.terminated.set()
        self._quic.close(error_code=0x10C, reason_phrase=reason)
        self.transmit()
