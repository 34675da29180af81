"""What a client session and a server connection do alike on their QUIC connection.

Both own an :class:`~zgate_proto.http3.H3Connection` over one
:class:`~zgate_proto.engines.base.QuicConn`, route its events the same way (HTTP datagrams
first, nothing once the connection ended), size and send packets in DATAGRAM capsules the
same way, and end or reset streams the engine may already have ended. :class:`Endpoint`
holds that once; :class:`~zgate_proto.session.ClientSession` and
:class:`~zgate_proto.session.ServerConnection` keep only what one side decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

from zgate_proto.capsules import Capsule, encode_capsule, encode_ip_datagram_capsule
from zgate_proto.engines.base import (
    ConnectionTerminated,
    DatagramReceived,
    QuicConn,
    QuicEvent,
    SendStatus,
)
from zgate_proto.http3 import ErrorCode, H3Connection, H3Event
from zgate_proto.session._events import PacketMode, SessionClosed
from zgate_proto.session._wire import MAX_IP_PACKET, STREAM_GONE, quietly

__all__ = ["Endpoint"]

EventT = TypeVar("EventT")


class Endpoint(Generic[EventT]):
    """The connection-wide half of a CONNECT-IP endpoint; ``EventT`` is what it returns.

    Subclasses say what a DATAGRAM frame, the connection's end and a batch of HTTP/3 events
    become (:meth:`_datagram`, :meth:`_connection_terminated`, :meth:`_h3_events`).
    """

    def __init__(
        self,
        quic: QuicConn,
        *,
        is_client: bool,
        datagrams: bool,
        max_capsule_size: int,
        max_stream_backlog: int,
    ) -> None:
        self._quic = quic
        self._h3 = H3Connection(quic, is_client=is_client, datagrams=datagrams)
        self._max_capsule_size = max_capsule_size
        self._max_backlog = max_stream_backlog
        self._terminated = False

    @property
    def h3(self) -> H3Connection:
        """The HTTP/3 layer (peer settings, for diagnostics)."""
        return self._h3

    @property
    def quic(self) -> QuicConn:
        """The QUIC connection underneath."""
        return self._quic

    # ------------------------------------------------------------------- receiving

    def receive(self, event: QuicEvent) -> list[EventT]:
        """The session events one QUIC event leads to."""
        if type(event) is DatagramReceived:
            return [self._datagram(event.data)]
        if self._terminated:
            return []
        if isinstance(event, ConnectionTerminated):
            self._terminated = True
            return self._connection_terminated(event)
        return self._h3_events(self._h3.handle_event(event))

    def _datagram(self, data: bytes) -> EventT:
        """The event for one DATAGRAM frame's payload (a packet, or why it was dropped)."""
        raise NotImplementedError

    def _connection_terminated(self, event: ConnectionTerminated) -> list[EventT]:
        """The events that end every session when the QUIC connection ends (once)."""
        raise NotImplementedError

    def _h3_events(self, events: list[H3Event]) -> list[EventT]:
        """The events a batch of HTTP/3 events leads to."""
        raise NotImplementedError

    # --------------------------------------------------------------------- sending

    def _packet_room(self, mode: PacketMode, prefix: bytes) -> int:
        """The largest IP packet a session in ``mode`` whose datagrams start with ``prefix``
        can send now."""
        if mode is PacketMode.DATAGRAM:
            return max(0, self._quic.max_datagram_payload - len(prefix))
        return min(self._max_capsule_size - 1, MAX_IP_PACKET)

    def _send_in_capsule(self, stream_id: int, packet: bytes) -> SendStatus:
        """Send one IP packet as a DATAGRAM capsule (STREAM mode)."""
        # The engine buffers stream data without limit: under overload that is seconds of
        # queueing delay for every packet. Drop at the tail instead, like a router queue.
        if self._quic.stream_backlog(stream_id) > self._max_backlog:
            return SendStatus.QUEUE_FULL
        try:
            self._h3.send_data(stream_id, encode_ip_datagram_capsule(packet))
        except STREAM_GONE:
            return SendStatus.CLOSED  # reset by the peer's STOP_SENDING, event not seen yet
        return SendStatus.SENT

    def _write_capsules(self, stream_id: int, capsules: Sequence[Capsule]) -> None:
        """Send control capsules on a stream (nothing if the engine ended it)."""
        data = b"".join(encode_capsule(c) for c in capsules)
        with quietly():
            self._h3.send_data(stream_id, data)

    def _end_stream(self, stream_id: int) -> None:
        """FIN on our side of a stream (nothing if the engine ended it)."""
        with quietly():
            self._h3.send_data(stream_id, b"", end_stream=True)

    def _reset(self, stream_id: int, error_code: int) -> None:
        """RESET_STREAM on our side of a stream (nothing if the engine ended it)."""
        with quietly():
            self._quic.reset_stream(stream_id, error_code)

    def _stop(self, stream_id: int, error_code: int) -> None:
        """Ask the peer to stop sending on a stream (nothing if the engine ended it)."""
        with quietly():
            self._quic.stop_stream(stream_id, error_code)

    def _malformed(self, stream_id: int, ended: bool, reason: str) -> SessionClosed:
        """A malformed capsule ends the session: reset the stream with H3_MESSAGE_ERROR and,
        unless the peer's side already ended, ask it to stop sending."""
        self._reset(stream_id, ErrorCode.H3_MESSAGE_ERROR)
        if not ended:
            self._stop(stream_id, ErrorCode.H3_MESSAGE_ERROR)
        return SessionClosed(stream_id, reason, True)
