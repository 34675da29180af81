"""The client side: the one CONNECT-IP session of an agent or connector."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Final

from zgate_proto.capsules import (
    AddressAssign,
    Capsule,
    CapsuleDecoder,
    DatagramCapsule,
    IPAddressRange,
    RouteAdvertisement,
)
from zgate_proto.engines.base import ConnectionTerminated, QuicConn, SendStatus
from zgate_proto.errors import DecodeError, RequestError
from zgate_proto.fq import flow_hash
from zgate_proto.http3 import (
    DataReceived,
    ErrorCode,
    H3Event,
    Headers,
    HeadersReceived,
    SendingStopped,
    SettingsReceived,
    StreamEvent,
    StreamWasReset,
)
from zgate_proto.request import (
    DEFAULT_TEMPLATE,
    build_connect_ip_request,
    validate_connect_ip_response,
)
from zgate_proto.session._endpoint import Endpoint
from zgate_proto.session._events import (
    MODE_HEADER,
    AddressesAssigned,
    ClientEvent,
    DropReason,
    Network,
    PacketDropped,
    PacketMode,
    PacketReceived,
    RequestFailed,
    ResponseReceived,
    RoutesAdvertised,
    SessionAccepted,
    SessionClosed,
    SessionError,
    SessionRefused,
)
from zgate_proto.session._requests import PendingBody, build_request, read_status
from zgate_proto.session._wire import (
    NO_ERRORS,
    capsule_packet,
    connection_closed,
    datagram_prefix,
    decode_capsules,
    mode_header,
    reset_closed,
    split_datagram,
    stop_closed,
)

__all__ = ["ClientSession", "ClientState"]


class ClientState(enum.Enum):
    """Where the client's session is."""

    WAITING_SETTINGS = "waiting_settings"  # the relay's SETTINGS have not arrived yet
    REQUESTED = "requested"  # the extended CONNECT was sent
    OPEN = "open"  # 2xx received: packets flow
    CLOSED = "closed"  # refused, or ended by either side


_CLIENT_MOVES: Final[Mapping[ClientState, frozenset[ClientState]]] = {
    ClientState.WAITING_SETTINGS: frozenset((ClientState.REQUESTED, ClientState.CLOSED)),
    ClientState.REQUESTED: frozenset((ClientState.OPEN, ClientState.CLOSED)),
    ClientState.OPEN: frozenset((ClientState.CLOSED,)),
    ClientState.CLOSED: frozenset(),
}


class _Exchange:
    """One :meth:`ClientSession.request` waiting for its response."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, limit: int) -> None:
        self.status = 0  # no final response yet
        self.headers: Headers = []
        self.body = PendingBody(limit)


class ClientSession(Endpoint[ClientEvent]):
    """One CONNECT-IP session on a client QUIC connection (sans-IO).

    Sends the extended CONNECT, with :data:`MODE_HEADER`, as soon as the relay's SETTINGS
    arrive: ``mode`` is the mode asked for; with ``fallback`` a DATAGRAM session becomes a
    STREAM one when the relay offers no HTTP datagrams. The mode the relay answers with is
    the one used. ``target``, ``ipproto`` and ``template`` scope the request (RFC 9484
    §4.6); the request is built at once, so a bad authority raises ProtoError here.
    ``datagrams=False``: our QUIC connection takes no DATAGRAM frames, so HTTP datagrams
    are not offered (RFC 9297 §2.1.1) and the relay answers in STREAM mode.

    Beside the session, :meth:`request` asks the relay plain HTTP/3 questions on the same
    connection; each ends in :class:`ResponseReceived` (body up to ``max_response_body``
    bytes) or :class:`RequestFailed`.
    """

    def __init__(
        self,
        quic: QuicConn,
        *,
        authority: str,
        mode: PacketMode,
        fallback: bool = True,
        max_capsule_size: int = 65536 + 64,
        max_stream_backlog: int = 256 * 1024,
        target: str = "*",
        ipproto: int | None = None,
        template: str = DEFAULT_TEMPLATE,
        datagrams: bool = True,
        max_response_body: int = 1024 * 1024,
    ) -> None:
        self._request = build_connect_ip_request(authority, target, ipproto, template)
        self._authority = authority.encode("ascii")
        self._max_response_body = max_response_body
        self._exchanges: dict[int, _Exchange] = {}
        super().__init__(
            quic,
            is_client=True,
            datagrams=datagrams,
            max_capsule_size=max_capsule_size,
            max_stream_backlog=max_stream_backlog,
        )
        self._mode = mode
        self._fallback = fallback
        self._decoder = CapsuleDecoder(max_capsule_size=max_capsule_size)
        self._state = ClientState.WAITING_SETTINGS
        self._stream_id = -1
        self._prefix = b""
        self._stopped: int | None = None  # STOP_SENDING code received before the answer
        self._assigned = False
        self._routed = False
        self._addresses: tuple[Network, ...] = ()
        self._routes: tuple[IPAddressRange, ...] = ()

    # ------------------------------------------------------------------ properties

    @property
    def state(self) -> ClientState:
        """Where the session is."""
        return self._state

    @property
    def stream_id(self) -> int:
        """The CONNECT stream's ID (-1 before the request is sent)."""
        return self._stream_id

    @property
    def mode(self) -> PacketMode:
        """The packet mode: asked for, then after fallback, then as the relay answered."""
        return self._mode

    @property
    def addresses(self) -> tuple[Network, ...]:
        """Our tunnel addresses (the last ADDRESS_ASSIGN)."""
        return self._addresses

    @property
    def routes(self) -> tuple[IPAddressRange, ...]:
        """What the relay lets us reach (the last ROUTE_ADVERTISEMENT)."""
        return self._routes

    @property
    def ready(self) -> bool:
        """Open, and ADDRESS_ASSIGN and ROUTE_ADVERTISEMENT both arrived."""
        return self._state is ClientState.OPEN and self._assigned and self._routed

    @property
    def max_packet(self) -> int:
        """The largest IP packet that can be sent now (0 before the request is sent)."""
        if self._stream_id < 0:
            return 0
        return self._packet_room(self._mode, self._prefix)

    def _move(self, state: ClientState) -> None:
        if state not in _CLIENT_MOVES[self._state]:
            raise SessionError(f"session cannot go from {self._state.value} to {state.value}")
        self._state = state

    # --------------------------------------------------------------------- sending

    def send_packet(self, packet: bytes, now: float | None = None) -> SendStatus:
        """Send one IP packet in the session's mode (see ServerConnection.send_packet);
        CLOSED unless the session is open."""
        if self._state is not ClientState.OPEN:
            return SendStatus.CLOSED
        if self._mode is PacketMode.DATAGRAM:
            return self._quic.send_datagram(self._prefix + packet, now, flow_hash(packet))
        return self._send_in_capsule(self._stream_id, packet)

    def send_capsules(self, capsules: Sequence[Capsule]) -> None:
        """Send control capsules (e.g. ADDRESS_REQUEST, a connector's ROUTE_ADVERTISEMENT)
        once the session is open (SessionError before; nothing once closed)."""
        if self._state is ClientState.CLOSED or not capsules:
            return
        if self._state is not ClientState.OPEN:
            raise SessionError("capsules can be sent once the session is open")
        self._write_capsules(self._stream_id, capsules)

    def request(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[bytes, bytes]] = (),
        body: bytes = b"",
    ) -> int:
        """Send a plain HTTP/3 request (``GET /.well-known/...``) on a new stream of the
        connection, the session's or not; returns its stream ID, which the
        :class:`ResponseReceived` or :class:`RequestFailed` that ends it carries.
        SessionError once the connection ended, or for a bad method, path or header."""
        if self._terminated:
            raise SessionError("the connection has ended: no more requests")
        section = build_request(method, self._authority, path, headers)
        stream_id = self._quic.next_stream_id(unidirectional=False)
        self._h3.send_headers(stream_id, section, end_stream=not body)
        if body:
            self._h3.send_data(stream_id, body, end_stream=True)
        self._exchanges[stream_id] = _Exchange(self._max_response_body)
        return stream_id

    def close(self) -> None:
        """End the session: FIN on the CONNECT stream (if the request was sent)."""
        if self._state is ClientState.CLOSED:
            return
        sent = self._state is not ClientState.WAITING_SETTINGS
        self._move(ClientState.CLOSED)
        if sent:
            self._end_stream(self._stream_id)

    # ------------------------------------------------------------------- receiving

    def _connection_terminated(self, event: ConnectionTerminated) -> list[ClientEvent]:
        reason = f"the connection ended: {event.reason or 'closed'}"
        out: list[ClientEvent] = [RequestFailed(s, reason) for s in self._exchanges]
        self._exchanges.clear()
        if self._state in (ClientState.REQUESTED, ClientState.OPEN):
            error = event.error_code not in NO_ERRORS
            out.append(SessionClosed(self._stream_id, event.reason or "connection closed", error))
        self._state = ClientState.CLOSED  # from any state: the connection is gone
        out.append(connection_closed(event))
        return out

    def _h3_events(self, events: list[H3Event]) -> list[ClientEvent]:
        out: list[ClientEvent] = []
        for h3_event in events:
            if isinstance(h3_event, SettingsReceived):
                self._settings(out)
                continue
            assert isinstance(h3_event, StreamEvent)  # the only other kind
            if h3_event.stream_id == self._stream_id:
                self._stream_event(h3_event, out)
            elif h3_event.stream_id in self._exchanges:
                self._exchange_event(h3_event, out)
        return out

    def _exchange_event(self, event: StreamEvent, out: list[ClientEvent]) -> None:
        """An event on a :meth:`request`'s stream."""
        stream_id = event.stream_id
        exchange = self._exchanges[stream_id]
        if isinstance(event, HeadersReceived):
            if not exchange.status:  # else trailers: nothing in them matters here
                status = read_status(event.headers)
                if not status:
                    self._exchange_failed(stream_id, "a response without a valid :status", out)
                    return
                if status >= 200:  # not an interim (1xx) response
                    exchange.status, exchange.headers = status, event.headers
            if event.stream_ended:
                self._exchange_data(stream_id, exchange, b"", out)
        elif isinstance(event, DataReceived):
            self._exchange_data(stream_id, exchange, event.data, out, ended=event.stream_ended)
        elif isinstance(event, StreamWasReset):
            del self._exchanges[stream_id]
            out.append(
                RequestFailed(
                    stream_id, f"the relay reset the stream (error 0x{event.error_code:x})"
                )
            )
        elif isinstance(event, SendingStopped) and event.error_code not in NO_ERRORS:
            # H3_NO_ERROR only says the rest of the request is not needed (RFC 9114 §4.1.1).
            self._exchange_failed(
                stream_id, f"the relay refused the request (error 0x{event.error_code:x})", out
            )

    def _exchange_data(
        self,
        stream_id: int,
        exchange: _Exchange,
        data: bytes,
        out: list[ClientEvent],
        *,
        ended: bool = True,
    ) -> None:
        if not exchange.body.add(data):
            limit = self._max_response_body
            self._exchange_failed(stream_id, f"a response body over {limit} bytes", out)
            return
        if not ended:
            return
        del self._exchanges[stream_id]
        if not exchange.status:
            out.append(RequestFailed(stream_id, "the stream ended without a final response"))
            return
        body = exchange.body.take()
        out.append(ResponseReceived(stream_id, exchange.status, exchange.headers, body))

    def _exchange_failed(self, stream_id: int, reason: str, out: list[ClientEvent]) -> None:
        """Give up on a request: reset our side and ask the relay to stop sending."""
        del self._exchanges[stream_id]
        self._reset(stream_id, ErrorCode.H3_REQUEST_CANCELLED)
        self._stop(stream_id, ErrorCode.H3_REQUEST_CANCELLED)
        out.append(RequestFailed(stream_id, reason))

    def _datagram(self, data: bytes) -> PacketDropped | PacketReceived:
        prefix = self._prefix
        if prefix and data.startswith(prefix):
            stream_id, packet = self._stream_id, data[len(prefix) :]
        else:
            stream_id, split = split_datagram(data)
            if stream_id != self._stream_id or stream_id < 0:
                reason = DropReason.UNKNOWN_STREAM if stream_id >= 0 else split
                assert isinstance(reason, DropReason)
                return PacketDropped(stream_id, reason)
            if not isinstance(split, bytes):
                assert isinstance(split, DropReason)
                return PacketDropped(stream_id, split)
            packet = split
        if self._state is ClientState.CLOSED:
            return PacketDropped(stream_id, DropReason.UNKNOWN_STREAM)
        return PacketReceived(stream_id, packet)

    def _settings(self, out: list[ClientEvent]) -> None:
        if self._state is not ClientState.WAITING_SETTINGS:
            return
        if not self._h3.peer_supports_extended_connect():
            self._refused("the relay does not offer extended CONNECT (RFC 9220)", 0, out)
            return
        if self._mode is PacketMode.DATAGRAM and not self._h3.peer_supports_datagrams():
            if not self._fallback:
                self._refused("the relay does not offer HTTP datagrams and fallback is off", 0, out)
                return
            self._mode = PacketMode.STREAM
        self._stream_id = self._quic.next_stream_id(unidirectional=False)
        self._prefix = datagram_prefix(self._stream_id)
        headers = [*self._request, (MODE_HEADER, self._mode.value.encode("ascii"))]
        self._h3.send_headers(self._stream_id, headers)
        self._move(ClientState.REQUESTED)

    def _refused(self, reason: str, status: int, out: list[ClientEvent]) -> None:
        self._move(ClientState.CLOSED)
        out.append(SessionRefused(reason, status))

    def _stream_event(self, event: H3Event, out: list[ClientEvent]) -> None:
        if self._state is ClientState.CLOSED:
            return
        stream_id = self._stream_id
        if isinstance(event, HeadersReceived):
            if self._state is ClientState.REQUESTED:
                self._response(event.headers, out)
            if event.stream_ended and self._state is ClientState.OPEN:
                self._data(b"", True, out)
        elif isinstance(event, DataReceived):
            self._data(event.data, event.stream_ended, out)
        elif isinstance(event, StreamWasReset):
            self._move(ClientState.CLOSED)
            self._reset(stream_id, ErrorCode.H3_REQUEST_CANCELLED)
            out.append(reset_closed(stream_id, "the relay", event.error_code))
        elif isinstance(event, SendingStopped):
            self._reset(stream_id, event.error_code)
            if self._state is ClientState.REQUESTED and event.error_code in NO_ERRORS:
                # RFC 9114 §4.1.1: the relay needs no more of the request, and its answer
                # (a refusal, most likely) is on its way: wait for it.
                self._stopped = event.error_code
                return
            self._move(ClientState.CLOSED)
            out.append(stop_closed(stream_id, "the relay", event.error_code))

    def _response(self, headers: Headers, out: list[ClientEvent]) -> None:
        for name, value in headers:
            if name == b":status" and value.startswith(b"1") and len(value) == 3:
                return  # interim response: the final one follows
        try:
            validate_connect_ip_response(headers)
        except RequestError as exc:
            # The request is over; the relay may already have reset our side with STOP_SENDING.
            self._reset(self._stream_id, ErrorCode.H3_REQUEST_CANCELLED)
            self._refused(f"the relay refused the CONNECT-IP request: {exc}", exc.status, out)
            return
        answered = mode_header(headers)
        if answered is not None and (
            answered is PacketMode.STREAM or self._h3.peer_supports_datagrams()
        ):
            self._mode = answered
        self._move(ClientState.OPEN)
        out.append(SessionAccepted(self._mode, headers))
        if self._stopped is not None:  # accepted, yet it will not read what we send
            self._move(ClientState.CLOSED)
            out.append(stop_closed(self._stream_id, "the relay", self._stopped))

    def _data(self, data: bytes, ended: bool, out: list[ClientEvent]) -> None:
        if self._state is not ClientState.OPEN:
            return  # DATA before the response never gets here: HTTP/3 refuses it
        stream_id = self._stream_id
        try:
            capsules = decode_capsules(self._decoder, data, ended)
        except DecodeError as exc:
            self._move(ClientState.CLOSED)
            reason = f"malformed capsule from the relay: {exc}"
            out.append(self._malformed(stream_id, ended, reason))
            return
        for capsule in capsules:
            if type(capsule) is DatagramCapsule:
                out.append(capsule_packet(stream_id, capsule))
            elif isinstance(capsule, AddressAssign):
                self._assigned = True
                self._addresses = tuple(a.prefix for a in capsule.addresses)
                out.append(AddressesAssigned(self._addresses))
            elif isinstance(capsule, RouteAdvertisement):
                self._routed = True
                self._routes = capsule.ranges
                out.append(RoutesAdvertised(stream_id, capsule.ranges))
        if ended:
            self._move(ClientState.CLOSED)
            self._end_stream(stream_id)
            out.append(SessionClosed(stream_id, "the relay ended the CONNECT-IP stream", False))
