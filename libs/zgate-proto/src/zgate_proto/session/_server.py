"""The server side: every CONNECT-IP session on one relay QUIC connection."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Final

from zgate_proto.capsules import (
    AddressRequest,
    Capsule,
    CapsuleDecoder,
    DatagramCapsule,
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
    StreamWasReset,
)
from zgate_proto.request import parse_connect_ip_request, response_headers
from zgate_proto.session._endpoint import Endpoint
from zgate_proto.session._events import (
    MODE_HEADER,
    AddressRequested,
    DropReason,
    PacketDropped,
    PacketMode,
    PacketReceived,
    RequestReceived,
    RequestRejected,
    RoutesAdvertised,
    ServerEvent,
    SessionClosed,
    SessionError,
    SessionRequested,
)
from zgate_proto.session._requests import PendingBody, build_response, read_request_line
from zgate_proto.session._wire import (
    NO_ERRORS,
    capsule_packet,
    connection_closed,
    datagram_prefix,
    decode_capsules,
    mode_header,
    quietly,
    reset_closed,
    split_datagram,
    stop_closed,
)

__all__ = ["ServerConnection", "ServerSessionState"]

#: Bytes of request streams held back while the client's SETTINGS are late, at most.
_MAX_PARKED: Final = 64 * 1024


class ServerSessionState(enum.Enum):
    """Where one server-side session is."""

    REQUESTED = "requested"  # SessionRequested returned, no answer yet
    OPEN = "open"  # accepted: packets flow
    CLOSED = "closed"  # answered with an error, ended by either side


_SERVER_MOVES: Final[Mapping[ServerSessionState, frozenset[ServerSessionState]]] = {
    ServerSessionState.REQUESTED: frozenset((ServerSessionState.OPEN, ServerSessionState.CLOSED)),
    ServerSessionState.OPEN: frozenset((ServerSessionState.CLOSED,)),
    ServerSessionState.CLOSED: frozenset(),
}


class _ServerSession:
    """One CONNECT stream on the server, kept until the peer's side of it has ended (so
    that nothing more it sends is mistaken for a new request)."""

    __slots__ = ("decoder", "mode", "prefix", "state", "stream_id")

    def __init__(self, stream_id: int, mode: PacketMode, max_capsule_size: int) -> None:
        self.stream_id = stream_id
        self.mode = mode
        self.state = ServerSessionState.REQUESTED
        self.prefix = datagram_prefix(stream_id)
        self.decoder = CapsuleDecoder(max_capsule_size=max_capsule_size)

    def move(self, state: ServerSessionState) -> None:
        if state not in _SERVER_MOVES[self.state]:
            raise SessionError(
                f"session on stream {self.stream_id} cannot go from {self.state.value} "
                f"to {state.value}"
            )
        self.state = state


_REQUESTED = ServerSessionState.REQUESTED
_OPEN = ServerSessionState.OPEN
_CLOSED = ServerSessionState.CLOSED


class _PlainRequest:
    """A request other than CONNECT, collected until its stream ends, then awaiting
    :meth:`ServerConnection.respond`."""

    __slots__ = ("body", "complete", "headers", "method", "path")

    def __init__(self, method: str, path: str, headers: Headers, limit: int) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = PendingBody(limit)
        self.complete = False

    def received(self, stream_id: int) -> RequestReceived:
        self.complete = True
        return RequestReceived(stream_id, self.method, self.path, self.headers, self.body.take())


class ServerConnection(Endpoint[ServerEvent]):
    """Every CONNECT-IP session on one server QUIC connection (sans-IO).

    Feed it every event of ``quic.next_event()`` with :meth:`receive`.
    ``datagrams=False`` stops it offering HTTP datagrams (for a QUIC connection that does
    not accept DATAGRAM frames). ``requests=True``: requests other than CONNECT (a GET, say)
    become :class:`RequestReceived` once complete, answered with :meth:`respond`, their
    body limited to ``max_request_body`` bytes (413 beyond); without it they are refused
    with 405, as every request but CONNECT-IP is.
    """

    def __init__(
        self,
        quic: QuicConn,
        *,
        max_capsule_size: int = 65536 + 64,
        max_stream_backlog: int = 256 * 1024,
        datagrams: bool = True,
        requests: bool = False,
        max_request_body: int = 16 * 1024,
    ) -> None:
        super().__init__(
            quic,
            is_client=False,
            datagrams=datagrams,
            max_capsule_size=max_capsule_size,
            max_stream_backlog=max_stream_backlog,
        )
        self._sessions: dict[int, _ServerSession] = {}
        self._serve_requests = requests
        self._max_request_body = max_request_body
        self._plain: dict[int, _PlainRequest] = {}
        # Request-stream events that came before the client's SETTINGS, whose
        # SETTINGS_H3_DATAGRAM the mode depends on (a lost packet can hold the control
        # stream back); replayed when they come, or at once past _MAX_PARKED bytes.
        self._parked: list[H3Event] | None = []
        self._parked_bytes = 0

    # ------------------------------------------------------------------ properties

    @property
    def session_ids(self) -> tuple[int, ...]:
        """Stream IDs of the sessions requested or open now."""
        return tuple(s for s, v in self._sessions.items() if v.state is not _CLOSED)

    def state(self, stream_id: int) -> ServerSessionState:
        """The state of the session on ``stream_id`` (CLOSED once forgotten)."""
        session = self._sessions.get(stream_id)
        return _CLOSED if session is None else session.state

    def mode(self, stream_id: int) -> PacketMode:
        """The packet mode of a requested or open session; SessionError for none."""
        return self._live(stream_id).mode

    def max_packet(self, stream_id: int) -> int:
        """The largest IP packet the session can send now (for ICMP packet-too-big)."""
        session = self._live(stream_id)
        return self._packet_room(session.mode, session.prefix)

    def _live(self, stream_id: int) -> _ServerSession:
        session = self._sessions.get(stream_id)
        if session is None or session.state is _CLOSED:
            raise SessionError(f"no session on stream {stream_id}")
        return session

    # ------------------------------------------------------------------- answering

    def accept(self, stream_id: int, mode: PacketMode, capsules: Sequence[Capsule] = ()) -> None:
        """Answer a requested session 200 (with :data:`MODE_HEADER`), then send
        ``capsules`` (ADDRESS_ASSIGN, ROUTE_ADVERTISEMENT). Does nothing if the peer
        closed the session meanwhile (or there never was a request); SessionError if it was
        already answered, or for DATAGRAM mode towards a peer that cannot receive datagrams."""
        session = self._requested(stream_id)
        if session is None:
            return
        if mode is PacketMode.DATAGRAM and not self._h3.peer_supports_datagrams():
            raise SessionError("the peer cannot receive HTTP datagrams: use STREAM mode")
        session.move(_OPEN)
        session.mode = mode
        headers = [*response_headers(200), (MODE_HEADER, mode.value.encode("ascii"))]
        with quietly():
            self._h3.send_headers(stream_id, headers)
        self.send_capsules(stream_id, capsules)

    def reject(self, stream_id: int, status: int) -> None:
        """Answer a requested session with a non-2xx ``status`` and end the stream (and
        ask the client to stop sending, RFC 9114 §4.1.1). Does nothing if the peer closed
        the session meanwhile."""
        if 200 <= status <= 299:
            raise SessionError(f"reject() needs a refusing status, not {status}")
        session = self._requested(stream_id)
        if session is None:
            return
        session.move(_CLOSED)
        self._refuse(stream_id, status)

    def respond(
        self,
        stream_id: int,
        status: int,
        headers: Sequence[tuple[bytes, bytes]] = (),
        body: bytes = b"",
    ) -> None:
        """Answer a :class:`RequestReceived` with a final ``status``, ``headers`` (regular
        fields; ``content-length`` is added) and ``body``, and end the stream. Does nothing
        if the peer cancelled the request meanwhile; SessionError if there is no complete
        request on the stream, or for a bad status or header name."""
        request = self._plain.get(stream_id)
        if request is None:
            return
        if not request.complete:
            raise SessionError(f"the request on stream {stream_id} has not been received yet")
        section = build_response(status, headers, body)
        del self._plain[stream_id]
        with quietly():
            self._h3.send_headers(stream_id, section, end_stream=not body)
            if body:
                self._h3.send_data(stream_id, body, end_stream=True)

    def _requested(self, stream_id: int) -> _ServerSession | None:
        session = self._sessions.get(stream_id)
        if session is None or session.state is _CLOSED:
            return None  # closed by the peer (or never requested: nothing to answer)
        if session.state is not _REQUESTED:
            raise SessionError(f"the request on stream {stream_id} was already answered")
        return session

    def _refuse(self, stream_id: int, status: int, *, peer_done: bool = False) -> None:
        with quietly():
            self._h3.send_headers(stream_id, response_headers(status), end_stream=True)
        if not peer_done:
            self._stop(stream_id, ErrorCode.H3_NO_ERROR)

    # --------------------------------------------------------------------- sending

    def send_packet(self, stream_id: int, packet: bytes, now: float | None = None) -> SendStatus:
        """Send one IP packet in the session's mode: a DATAGRAM frame (TOO_BIG when it does
        not fit one, QUEUE_FULL when the engine's fifo queue is full; fq-codel queues it in
        its flow's queue, timed by ``now``) or a DATAGRAM capsule (QUEUE_FULL while the
        stream's unsent backlog exceeds ``max_stream_backlog``). CLOSED unless the session
        is open."""
        session = self._sessions.get(stream_id)
        if session is None or session.state is not _OPEN:
            return SendStatus.CLOSED
        if session.mode is PacketMode.DATAGRAM:
            return self._quic.send_datagram(session.prefix + packet, now, flow_hash(packet))
        return self._send_in_capsule(stream_id, packet)

    def send_capsules(self, stream_id: int, capsules: Sequence[Capsule]) -> None:
        """Send control capsules on an open session (nothing once it is closed)."""
        session = self._sessions.get(stream_id)
        if capsules and session is not None and session.state is _OPEN:
            self._write_capsules(stream_id, capsules)

    def close_session(self, stream_id: int, *, error_code: int | None = None) -> None:
        """End a session: FIN on the stream, or, with ``error_code``, reset it and ask the
        peer to stop sending. A session still waiting for an answer is reset
        (H3_REQUEST_REJECTED unless a code is given). No event follows."""
        session = self._sessions.get(stream_id)
        if session is None or session.state is _CLOSED:
            return
        if session.state is _REQUESTED and error_code is None:
            error_code = ErrorCode.H3_REQUEST_REJECTED
        session.move(_CLOSED)
        if error_code is None:
            self._end_stream(stream_id)
        else:
            self._reset(stream_id, error_code)
            self._stop(stream_id, error_code)

    # ------------------------------------------------------------------- receiving

    def _h3_events(self, events: list[H3Event]) -> list[ServerEvent]:
        out: list[ServerEvent] = []
        for h3_event in events:
            if self._parked is None:
                self._h3_event(h3_event, out)
            elif isinstance(h3_event, SettingsReceived):
                self._unpark(out)
            else:
                self._park(h3_event, out)
        return out

    def _park(self, event: H3Event, out: list[ServerEvent]) -> None:
        parked = self._parked
        assert parked is not None
        parked.append(event)
        if isinstance(event, DataReceived | HeadersReceived):
            self._parked_bytes += len(event.data) if isinstance(event, DataReceived) else 256
        if self._parked_bytes > _MAX_PARKED:
            self._unpark(out)  # waited long enough: the mode will be STREAM

    def _unpark(self, out: list[ServerEvent]) -> None:
        parked, self._parked = self._parked or [], None
        for event in parked:
            self._h3_event(event, out)

    def _datagram(self, data: bytes) -> PacketDropped | PacketReceived:
        # The common case (a low stream ID, context ID 0) without a call.
        if len(data) > 1 and data[0] < 0x40 and data[1] == 0:
            stream_id: int = data[0] << 2
            packet: bytes | DropReason = data[2:]
        else:
            stream_id, packet = split_datagram(data)
            if stream_id < 0:
                return PacketDropped(-1, DropReason.MALFORMED_DATAGRAM)
        session = self._sessions.get(stream_id)
        if session is None or session.state is _CLOSED:
            return PacketDropped(stream_id, DropReason.UNKNOWN_STREAM)
        if type(packet) is bytes:
            return PacketReceived(stream_id, packet)
        assert isinstance(packet, DropReason)
        return PacketDropped(stream_id, packet)

    def _h3_event(self, event: H3Event, out: list[ServerEvent]) -> None:
        if isinstance(event, DataReceived):
            session = self._sessions.get(event.stream_id)
            if session is not None:
                self._data(session, event.data, event.stream_ended, out)
            elif event.stream_id in self._plain:
                self._plain_data(event.stream_id, event.data, event.stream_ended, out)
        elif isinstance(event, HeadersReceived):
            self._headers(event, out)
        elif isinstance(event, StreamWasReset):
            self._plain.pop(event.stream_id, None)  # a cancelled request needs no answer
            session = self._sessions.pop(event.stream_id, None)
            if session is not None and session.state is not _CLOSED:
                session.move(_CLOSED)
                self._reset(event.stream_id, ErrorCode.H3_REQUEST_CANCELLED)
                out.append(reset_closed(event.stream_id, "peer", event.error_code))
        elif isinstance(event, SendingStopped):
            if self._plain.pop(event.stream_id, None) is not None:
                self._reset(event.stream_id, event.error_code)  # it wants no answer
            session = self._sessions.get(event.stream_id)
            if session is not None and session.state is not _CLOSED:
                session.move(_CLOSED)
                self._reset(event.stream_id, event.error_code)
                out.append(stop_closed(event.stream_id, "peer", event.error_code))

    def _headers(self, event: HeadersReceived, out: list[ServerEvent]) -> None:
        stream_id = event.stream_id
        session = self._sessions.get(stream_id)
        if session is not None:  # trailers: nothing in them matters here
            if event.stream_ended:
                self._data(session, b"", True, out)
            return
        if stream_id in self._plain:  # a plain request's trailers
            if event.stream_ended:
                self._plain_data(stream_id, b"", True, out)
            return
        try:
            parse_connect_ip_request(event.headers)
        except RequestError as exc:
            if self._serve_requests and exc.reason == "bad_method":
                self._plain_request(event, out)
            else:
                self._rejected(stream_id, exc, event.stream_ended, out)
            return
        asked = mode_header(event.headers)
        if asked is PacketMode.STREAM or not self._h3.peer_supports_datagrams():
            mode = PacketMode.STREAM
        else:
            mode = PacketMode.DATAGRAM
        session = self._sessions[stream_id] = _ServerSession(
            stream_id, mode, self._max_capsule_size
        )
        out.append(SessionRequested(stream_id, event.headers, mode))
        if event.stream_ended:
            self._data(session, b"", True, out)

    def _rejected(
        self, stream_id: int, exc: RequestError, ended: bool, out: list[ServerEvent]
    ) -> None:
        """Answer a request we refuse; what else its peer sends on the stream is ignored."""
        self._refuse(stream_id, exc.status, peer_done=ended)
        if not ended:
            closed = _ServerSession(stream_id, PacketMode.STREAM, 0)
            closed.state = _CLOSED
            self._sessions[stream_id] = closed
        out.append(RequestRejected(stream_id, exc.status, exc.reason, str(exc)))

    def _plain_request(self, event: HeadersReceived, out: list[ServerEvent]) -> None:
        """A request other than CONNECT, for the caller (``requests=True``)."""
        try:
            method, path = read_request_line(event.headers)
        except RequestError as exc:
            self._rejected(event.stream_id, exc, event.stream_ended, out)
            return
        request = _PlainRequest(method, path, event.headers, self._max_request_body)
        self._plain[event.stream_id] = request
        if event.stream_ended:
            out.append(request.received(event.stream_id))

    def _plain_data(self, stream_id: int, data: bytes, ended: bool, out: list[ServerEvent]) -> None:
        request = self._plain[stream_id]  # incomplete: nothing follows the FIN
        if not request.body.add(data):
            del self._plain[stream_id]
            too_large = RequestError(
                f"request body over {self._max_request_body} bytes",
                status=413,
                reason="body_too_large",
            )
            self._rejected(stream_id, too_large, ended, out)
        elif ended:
            out.append(request.received(stream_id))

    def _data(
        self, session: _ServerSession, data: bytes, ended: bool, out: list[ServerEvent]
    ) -> None:
        stream_id = session.stream_id
        if session.state is _CLOSED:
            if ended:
                del self._sessions[stream_id]
            return
        try:
            capsules = decode_capsules(session.decoder, data, ended)
        except DecodeError as exc:
            session.move(_CLOSED)
            if ended:
                del self._sessions[stream_id]
            out.append(self._malformed(stream_id, ended, f"malformed capsule: {exc}"))
            return
        for capsule in capsules:
            if type(capsule) is DatagramCapsule:
                out.append(capsule_packet(stream_id, capsule))
            elif isinstance(capsule, AddressRequest):
                out.append(AddressRequested(stream_id, capsule))
            elif isinstance(capsule, RouteAdvertisement):
                out.append(RoutesAdvertised(stream_id, capsule.ranges))
            # ADDRESS_ASSIGN from a client means nothing to a relay; unknown types were
            # skipped by the decoder (RFC 9297 §3.2).
        if ended:
            del self._sessions[stream_id]
            if session.state is _OPEN:
                self._end_stream(stream_id)
            else:  # never answered: there is no response to end cleanly
                self._reset(stream_id, ErrorCode.H3_REQUEST_CANCELLED)
            session.move(_CLOSED)
            out.append(SessionClosed(stream_id, "peer ended the stream", False))

    def _connection_terminated(self, event: ConnectionTerminated) -> list[ServerEvent]:
        reason = event.reason or "connection closed"
        error = event.error_code not in NO_ERRORS
        out: list[ServerEvent] = [
            SessionClosed(stream_id, reason, error)
            for stream_id, session in self._sessions.items()
            if session.state is not _CLOSED
        ]
        self._sessions.clear()
        self._plain.clear()
        out.append(connection_closed(event))
        return out
