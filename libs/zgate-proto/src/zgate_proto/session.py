"""CONNECT-IP sessions (RFC 9484) as sans-IO state machines, h11 style.

:class:`ServerConnection` holds every session on one server QUIC connection;
:class:`ClientSession` is the one session an agent or connector opens. Both are fed every
event of their :class:`~zgate_proto.engines.base.QuicConn` through ``receive`` and return
frozen, past-tense events; they write to the connection directly (the caller flushes it).
They decide nothing that belongs to the relay or the agent: the server answers a
:class:`SessionRequested` only when its caller calls :meth:`ServerConnection.accept` or
:meth:`ServerConnection.reject`.

Packets travel as HTTP datagrams with context ID 0 in one of two modes per session
(:class:`PacketMode`); whatever a session's mode, packets that arrive in the other form are
accepted too, as RFC 9484 allows both at any time.

Events of one ``receive`` call come in wire order, so a caller that handles them in order
sees, say, :class:`SessionRequested` before the packets of that session. Events about a
session the caller rejected or closed earlier in the same list may still follow: ignore
them. ``accept``/``reject``/``close_session`` on a session the peer already closed (its
:class:`SessionClosed` is in the list) do nothing.
"""

from __future__ import annotations

import contextlib
import enum
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from zgate_proto.capsules import (
    AddressAssign,
    AddressRequest,
    Capsule,
    CapsuleDecoder,
    DatagramCapsule,
    IPAddressRange,
    RouteAdvertisement,
    encode_capsule,
    encode_ip_datagram_capsule,
)
from zgate_proto.datagram import CONTEXT_ID_IP, decode_ip_datagram
from zgate_proto.engines.base import (
    ConnectionTerminated,
    DatagramReceived,
    QuicConn,
    QuicEvent,
    SendStatus,
)
from zgate_proto.errors import DecodeError, ProtoError, RequestError
from zgate_proto.http3 import (
    DataReceived,
    ErrorCode,
    H3Connection,
    H3Event,
    Headers,
    HeadersReceived,
    SendingStopped,
    SettingsReceived,
    StreamWasReset,
)
from zgate_proto.request import (
    DEFAULT_TEMPLATE,
    build_connect_ip_request,
    parse_connect_ip_request,
    response_headers,
    validate_connect_ip_response,
)
from zgate_proto.varint import decode_varint, encode_varint

__all__ = [
    "DATAGRAM_OVERHEAD",
    "MODE_HEADER",
    "AddressRequested",
    "AddressesAssigned",
    "ClientEvent",
    "ClientSession",
    "ClientState",
    "ConnectionClosed",
    "DropReason",
    "PacketDropped",
    "PacketMode",
    "PacketReceived",
    "RequestRejected",
    "RoutesAdvertised",
    "SendStatus",
    "ServerConnection",
    "ServerEvent",
    "ServerSessionState",
    "SessionAccepted",
    "SessionClosed",
    "SessionError",
    "SessionEvent",
    "SessionRefused",
    "SessionRequested",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Bytes a QUIC 1-RTT packet carrying one DATAGRAM frame adds around the frame's data, at
#: worst: short header (1) + connection ID (up to 20) + packet number (up to 4) + AEAD tag
#: (16) + frame type (1) + length varint (2). Engines account for it in
#: ``QuicConn.max_datagram_payload``; kept for callers that size packets ahead of a path.
DATAGRAM_OVERHEAD: Final = 44

#: Request header by which a zgate agent tells the relay how it wants packets sent back,
#: echoed in the response with the mode chosen. Peers that do not send it get datagrams
#: when they support them (RFC 9484's default).
MODE_HEADER: Final = b"zgate-packet-mode"

#: The largest IP packet a DATAGRAM capsule carries here (IPv4's and plain IPv6's limit).
_MAX_IP_PACKET: Final = 65535


class PacketMode(enum.StrEnum):
    """How IP packets travel on a CONNECT-IP stream (both are RFC 9484 / RFC 9297)."""

    DATAGRAM = "datagram"
    """QUIC DATAGRAM frames, context ID 0: unreliable, no head-of-line blocking."""
    STREAM = "stream"
    """DATAGRAM capsules (type 0x00) on the CONNECT stream: reliable and ordered."""


class DropReason(enum.StrEnum):
    """Why an arriving packet was dropped (fixed values, fit for a metrics label)."""

    UNKNOWN_CONTEXT = "unknown_context"
    """An HTTP datagram with a context ID other than 0 (RFC 9484 §6: drop silently)."""
    UNKNOWN_STREAM = "unknown_stream"
    """A DATAGRAM frame for a stream that carries no session (any more)."""
    MALFORMED_DATAGRAM = "malformed_datagram"
    """A DATAGRAM frame or capsule without a complete quarter stream ID or context ID.
    RFC 9297 §2.1 makes a short frame a connection error; one garbled frame is dropped
    here instead, so that it cannot end every other session on the connection."""


class SessionError(ProtoError):
    """The caller used a session in a way its state does not allow (a local error: what
    the peer does never raises, it becomes an event)."""

    default_reason = "session_state"


# ---------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """Base of the events of this module."""


@dataclass(frozen=True, slots=True)
class SessionRequested(SessionEvent):
    """Server: a valid CONNECT-IP request arrived; answer it with accept() or reject().

    ``mode`` is what the client asked for with :data:`MODE_HEADER`, STREAM when the client
    cannot receive HTTP datagrams, else DATAGRAM.
    """

    stream_id: int
    headers: Headers
    mode: PacketMode


@dataclass(frozen=True, slots=True)
class RequestRejected(SessionEvent):
    """Server: a malformed or unsupported request, already answered with ``status``.

    ``reason`` is a fixed identifier (``RequestError.reason``, e.g. "malformed_request",
    "bad_method", "not_found"); ``detail`` says what was wrong.
    """

    stream_id: int
    status: int
    reason: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class SessionAccepted(SessionEvent):
    """Client: the relay answered 2xx; ``mode`` is the one packets now travel in."""

    mode: PacketMode
    headers: Headers


@dataclass(frozen=True, slots=True)
class SessionRefused(SessionEvent):
    """Client: no session: no extended CONNECT, no datagrams while fallback is off, or a
    response that refuses (``status`` is the status received, 0 when there was none)."""

    reason: str
    status: int = 0


@dataclass(frozen=True, slots=True)
class AddressesAssigned(SessionEvent):
    """Client: ADDRESS_ASSIGN arrived; ``addresses`` is the full current list."""

    addresses: tuple[Network, ...]


@dataclass(frozen=True, slots=True)
class AddressRequested(SessionEvent):
    """Server: the client sent ADDRESS_REQUEST."""

    stream_id: int
    request: AddressRequest


@dataclass(frozen=True, slots=True)
class RoutesAdvertised(SessionEvent):
    """The peer sent ROUTE_ADVERTISEMENT (server side: a connector's prefixes; client side:
    what the relay lets us reach). ``ranges`` is the full current list."""

    stream_id: int
    ranges: tuple[IPAddressRange, ...]


@dataclass(frozen=True, slots=True)
class PacketReceived(SessionEvent):
    """An IP packet arrived on the session of ``stream_id`` (client side: its one
    CONNECT stream), as an HTTP datagram or a DATAGRAM capsule."""

    stream_id: int
    packet: bytes


@dataclass(frozen=True, slots=True)
class PacketDropped(SessionEvent):
    """An arriving packet was dropped (``reason``: a :class:`DropReason`). ``stream_id``
    is -1 when the frame was too short to name one."""

    stream_id: int
    reason: DropReason


@dataclass(frozen=True, slots=True)
class SessionClosed(SessionEvent):
    """A session ended by the peer's doing: it ended or reset the stream, stopped reading
    it, sent a malformed capsule (then we reset the stream with H3_MESSAGE_ERROR), or the
    connection ended. ``error``: the end was abnormal (a protocol error, an error code
    other than H3_NO_ERROR)."""

    stream_id: int
    reason: str
    error: bool


@dataclass(frozen=True, slots=True)
class ConnectionClosed(SessionEvent):
    """The QUIC connection terminated; a :class:`SessionClosed` for each open session came
    first and nothing follows."""

    error_code: int
    reason: str
    by_peer: bool
    handshake_done: bool = False


ServerEvent = (
    SessionRequested
    | RequestRejected
    | PacketReceived
    | PacketDropped
    | AddressRequested
    | RoutesAdvertised
    | SessionClosed
    | ConnectionClosed
)
ClientEvent = (
    SessionAccepted
    | SessionRefused
    | AddressesAssigned
    | RoutesAdvertised
    | PacketReceived
    | PacketDropped
    | SessionClosed
    | ConnectionClosed
)


# --------------------------------------------------------------------- shared parts

_NO_ERRORS: Final = frozenset((0, ErrorCode.H3_NO_ERROR))

#: What engines raise for a stream that can no longer take a write, reset or stop: the
#: peer's STOP_SENDING resets our side inside the engine before its event reaches us, so a
#: session may meet such a stream through no fault of its own (the qh3 adapter raises
#: ValueError, aioquic's own RuntimeError passes through its adapter).
_STREAM_GONE: Final = (ValueError, RuntimeError)


def _quietly() -> contextlib.suppress:
    """For writes that end or answer a stream: one the engine already ended needs none."""
    return contextlib.suppress(*_STREAM_GONE)


def _datagram_prefix(stream_id: int) -> bytes:
    """Quarter stream ID and context ID 0: the fixed head of each of a session's datagrams."""
    return encode_varint(stream_id >> 2) + encode_varint(CONTEXT_ID_IP)


def _split_datagram(data: bytes) -> tuple[int, bytes | DropReason]:
    """(stream ID, packet) of a DATAGRAM frame; the packet is a DropReason instead when the
    frame cannot be read or carries another context. The stream ID is -1 when unreadable."""
    try:
        quarter, pos = decode_varint(data)
    except DecodeError:
        return -1, DropReason.MALFORMED_DATAGRAM
    try:
        packet = decode_ip_datagram(data[pos:])
    except DecodeError:
        return quarter << 2, DropReason.MALFORMED_DATAGRAM
    return quarter << 2, DropReason.UNKNOWN_CONTEXT if packet is None else packet


def _capsule_packet(stream_id: int, capsule: DatagramCapsule) -> PacketReceived | PacketDropped:
    try:
        packet = decode_ip_datagram(capsule.payload)
    except DecodeError:
        return PacketDropped(stream_id, DropReason.MALFORMED_DATAGRAM)
    if packet is None:
        return PacketDropped(stream_id, DropReason.UNKNOWN_CONTEXT)
    return PacketReceived(stream_id, packet)


def _mode_header(headers: Headers) -> PacketMode | None:
    for name, value in headers:
        if name == MODE_HEADER:
            try:
                return PacketMode(value.decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                return None
    return None


def _reset_reason(who: str, code: int) -> str:
    return f"{who} reset the stream (error 0x{code:x})"


def _stop_reason(who: str, code: int) -> str:
    return f"{who} stopped reading the stream (error 0x{code:x})"


def _terminated(event: ConnectionTerminated) -> ConnectionClosed:
    return ConnectionClosed(event.error_code, event.reason, event.by_peer, event.handshake_done)


# ---------------------------------------------------------------------- server side


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
        self.prefix = _datagram_prefix(stream_id)
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


class ServerConnection:
    """Every CONNECT-IP session on one server QUIC connection (sans-IO).

    Feed it every event of ``quic.next_event()`` with :meth:`receive`.
    ``datagrams=False`` stops it offering HTTP datagrams (for a QUIC connection that does
    not accept DATAGRAM frames).
    """

    def __init__(
        self,
        quic: QuicConn,
        *,
        max_capsule_size: int = 65536 + 64,
        max_stream_backlog: int = 256 * 1024,
        datagrams: bool = True,
    ) -> None:
        self._quic = quic
        self._h3 = H3Connection(quic, is_client=False, datagrams=datagrams)
        self._max_capsule_size = max_capsule_size
        self._max_backlog = max_stream_backlog
        self._sessions: dict[int, _ServerSession] = {}
        self._terminated = False

    # ------------------------------------------------------------------ properties

    @property
    def h3(self) -> H3Connection:
        """The HTTP/3 layer (peer settings, for diagnostics)."""
        return self._h3

    @property
    def quic(self) -> QuicConn:
        """The QUIC connection underneath."""
        return self._quic

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
        if session.mode is PacketMode.DATAGRAM:
            return max(0, self._quic.max_datagram_payload - len(session.prefix))
        return min(self._max_capsule_size - 1, _MAX_IP_PACKET)

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
        with _quietly():
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

    def _requested(self, stream_id: int) -> _ServerSession | None:
        session = self._sessions.get(stream_id)
        if session is None or session.state is _CLOSED:
            return None  # closed by the peer (or never requested: nothing to answer)
        if session.state is not _REQUESTED:
            raise SessionError(f"the request on stream {stream_id} was already answered")
        return session

    def _refuse(self, stream_id: int, status: int, *, peer_done: bool = False) -> None:
        with _quietly():
            self._h3.send_headers(stream_id, response_headers(status), end_stream=True)
        if not peer_done:
            with _quietly():
                self._quic.stop_stream(stream_id, ErrorCode.H3_NO_ERROR)

    # --------------------------------------------------------------------- sending

    def send_packet(self, stream_id: int, packet: bytes) -> SendStatus:
        """Send one IP packet in the session's mode: a DATAGRAM frame (TOO_BIG when it does
        not fit one, QUEUE_FULL when the engine's queue is full) or a DATAGRAM capsule
        (QUEUE_FULL while the stream's unsent backlog exceeds ``max_stream_backlog``).
        CLOSED unless the session is open."""
        session = self._sessions.get(stream_id)
        if session is None or session.state is not _OPEN:
            return SendStatus.CLOSED
        if session.mode is PacketMode.DATAGRAM:
            return self._quic.send_datagram(session.prefix + packet)
        # The engine buffers stream data without limit: under overload that is seconds of
        # queueing delay for every packet. Drop at the tail instead, like a router queue.
        if self._quic.stream_backlog(stream_id) > self._max_backlog:
            return SendStatus.QUEUE_FULL
        try:
            self._h3.send_data(stream_id, encode_ip_datagram_capsule(packet))
        except _STREAM_GONE:
            return SendStatus.CLOSED  # reset by the peer's STOP_SENDING, event not seen yet
        return SendStatus.SENT

    def send_capsules(self, stream_id: int, capsules: Sequence[Capsule]) -> None:
        """Send control capsules on an open session (nothing once it is closed)."""
        session = self._sessions.get(stream_id)
        if capsules and session is not None and session.state is _OPEN:
            data = b"".join(encode_capsule(c) for c in capsules)
            with _quietly():
                self._h3.send_data(stream_id, data)

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
        with _quietly():
            if error_code is None:
                self._h3.send_data(stream_id, b"", end_stream=True)
            else:
                self._quic.reset_stream(stream_id, error_code)
        if error_code is not None:
            with _quietly():
                self._quic.stop_stream(stream_id, error_code)

    # ------------------------------------------------------------------- receiving

    def receive(self, event: QuicEvent) -> list[ServerEvent]:
        """The session events one QUIC event leads to."""
        if type(event) is DatagramReceived:
            return [self._datagram(event.data)]
        if self._terminated:
            return []
        if isinstance(event, ConnectionTerminated):
            return self._connection_terminated(event)
        out: list[ServerEvent] = []
        for h3_event in self._h3.handle_event(event):
            self._h3_event(h3_event, out)
        return out

    def _datagram(self, data: bytes) -> PacketDropped | PacketReceived:
        # The common case (a low stream ID, context ID 0) without a call.
        if len(data) > 1 and data[0] < 0x40 and data[1] == 0:
            stream_id: int = data[0] << 2
            packet: bytes | DropReason = data[2:]
        else:
            stream_id, packet = _split_datagram(data)
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
        elif isinstance(event, HeadersReceived):
            self._headers(event, out)
        elif isinstance(event, StreamWasReset):
            session = self._sessions.pop(event.stream_id, None)
            if session is not None and session.state is not _CLOSED:
                session.move(_CLOSED)
                with _quietly():
                    self._quic.reset_stream(event.stream_id, ErrorCode.H3_REQUEST_CANCELLED)
                reason = _reset_reason("peer", event.error_code)
                out.append(
                    SessionClosed(event.stream_id, reason, event.error_code not in _NO_ERRORS)
                )
        elif isinstance(event, SendingStopped):
            session = self._sessions.get(event.stream_id)
            if session is not None and session.state is not _CLOSED:
                session.move(_CLOSED)
                with _quietly():
                    self._quic.reset_stream(event.stream_id, event.error_code)
                reason = _stop_reason("peer", event.error_code)
                out.append(
                    SessionClosed(event.stream_id, reason, event.error_code not in _NO_ERRORS)
                )

    def _headers(self, event: HeadersReceived, out: list[ServerEvent]) -> None:
        stream_id = event.stream_id
        session = self._sessions.get(stream_id)
        if session is not None:  # trailers: nothing in them matters here
            if event.stream_ended:
                self._data(session, b"", True, out)
            return
        try:
            parse_connect_ip_request(event.headers)
        except RequestError as exc:
            self._refuse(stream_id, exc.status, peer_done=event.stream_ended)
            if not event.stream_ended:
                closed = _ServerSession(stream_id, PacketMode.STREAM, 0)
                closed.state = _CLOSED
                self._sessions[stream_id] = closed
            out.append(RequestRejected(stream_id, exc.status, exc.reason, str(exc)))
            return
        asked = _mode_header(event.headers)
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

    def _data(
        self, session: _ServerSession, data: bytes, ended: bool, out: list[ServerEvent]
    ) -> None:
        stream_id = session.stream_id
        if session.state is _CLOSED:
            if ended:
                del self._sessions[stream_id]
            return
        try:
            capsules = session.decoder.feed(data) if data else []
            if ended:
                session.decoder.eof()  # a capsule cut short by FIN is malformed (RFC 9297 §3.3)
        except DecodeError as exc:
            self._malformed(session, ended, exc, out)
            return
        for capsule in capsules:
            if type(capsule) is DatagramCapsule:
                out.append(_capsule_packet(stream_id, capsule))
            elif isinstance(capsule, AddressRequest):
                out.append(AddressRequested(stream_id, capsule))
            elif isinstance(capsule, RouteAdvertisement):
                out.append(RoutesAdvertised(stream_id, capsule.ranges))
            # ADDRESS_ASSIGN from a client means nothing to a relay; unknown types were
            # skipped by the decoder (RFC 9297 §3.2).
        if ended:
            del self._sessions[stream_id]
            with _quietly():
                if session.state is _OPEN:
                    self._h3.send_data(stream_id, b"", end_stream=True)
                else:  # never answered: there is no response to end cleanly
                    self._quic.reset_stream(stream_id, ErrorCode.H3_REQUEST_CANCELLED)
            session.move(_CLOSED)
            out.append(SessionClosed(stream_id, "peer ended the stream", False))

    def _malformed(
        self, session: _ServerSession, ended: bool, exc: DecodeError, out: list[ServerEvent]
    ) -> None:
        stream_id = session.stream_id
        session.move(_CLOSED)
        with _quietly():
            self._quic.reset_stream(stream_id, ErrorCode.H3_MESSAGE_ERROR)
        if ended:
            del self._sessions[stream_id]
        else:
            with _quietly():
                self._quic.stop_stream(stream_id, ErrorCode.H3_MESSAGE_ERROR)
        out.append(SessionClosed(stream_id, f"malformed capsule: {exc}", True))

    def _connection_terminated(self, event: ConnectionTerminated) -> list[ServerEvent]:
        self._terminated = True
        reason = event.reason or "connection closed"
        error = event.error_code not in _NO_ERRORS
        out: list[ServerEvent] = [
            SessionClosed(stream_id, reason, error)
            for stream_id, session in self._sessions.items()
            if session.state is not _CLOSED
        ]
        self._sessions.clear()
        out.append(_terminated(event))
        return out


# ---------------------------------------------------------------------- client side


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


class ClientSession:
    """One CONNECT-IP session on a client QUIC connection (sans-IO).

    Sends the extended CONNECT, with :data:`MODE_HEADER`, as soon as the relay's SETTINGS
    arrive: ``mode`` is the mode asked for; with ``fallback`` a DATAGRAM session becomes a
    STREAM one when the relay offers no HTTP datagrams. The mode the relay answers with is
    the one used. ``target``, ``ipproto`` and ``template`` scope the request (RFC 9484
    §4.6); the request is built at once, so a bad authority raises ProtoError here.
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
    ) -> None:
        self._quic = quic
        self._request = build_connect_ip_request(authority, target, ipproto, template)
        self._h3 = H3Connection(quic, is_client=True, datagrams=datagrams)
        self._mode = mode
        self._fallback = fallback
        self._max_capsule_size = max_capsule_size
        self._max_backlog = max_stream_backlog
        self._decoder = CapsuleDecoder(max_capsule_size=max_capsule_size)
        self._state = ClientState.WAITING_SETTINGS
        self._stream_id = -1
        self._prefix = b""
        self._stopped: int | None = None  # STOP_SENDING code received before the answer
        self._assigned = False
        self._routed = False
        self._terminated = False
        self._addresses: tuple[Network, ...] = ()
        self._routes: tuple[IPAddressRange, ...] = ()

    # ------------------------------------------------------------------ properties

    @property
    def h3(self) -> H3Connection:
        """The HTTP/3 layer (peer settings, for diagnostics)."""
        return self._h3

    @property
    def quic(self) -> QuicConn:
        """The QUIC connection underneath."""
        return self._quic

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
        if self._mode is PacketMode.DATAGRAM:
            return max(0, self._quic.max_datagram_payload - len(self._prefix))
        return min(self._max_capsule_size - 1, _MAX_IP_PACKET)

    def _move(self, state: ClientState) -> None:
        if state not in _CLIENT_MOVES[self._state]:
            raise SessionError(f"session cannot go from {self._state.value} to {state.value}")
        self._state = state

    # --------------------------------------------------------------------- sending

    def send_packet(self, packet: bytes) -> SendStatus:
        """Send one IP packet in the session's mode (see ServerConnection.send_packet);
        CLOSED unless the session is open."""
        if self._state is not ClientState.OPEN:
            return SendStatus.CLOSED
        if self._mode is PacketMode.DATAGRAM:
            return self._quic.send_datagram(self._prefix + packet)
        if self._quic.stream_backlog(self._stream_id) > self._max_backlog:
            return SendStatus.QUEUE_FULL
        try:
            self._h3.send_data(self._stream_id, encode_ip_datagram_capsule(packet))
        except _STREAM_GONE:
            return SendStatus.CLOSED  # reset by the relay's STOP_SENDING, event not seen yet
        return SendStatus.SENT

    def send_capsules(self, capsules: Sequence[Capsule]) -> None:
        """Send control capsules (e.g. ADDRESS_REQUEST, a connector's ROUTE_ADVERTISEMENT)
        once the session is open (SessionError before; nothing once closed)."""
        if self._state is ClientState.CLOSED or not capsules:
            return
        if self._state is not ClientState.OPEN:
            raise SessionError("capsules can be sent once the session is open")
        data = b"".join(encode_capsule(c) for c in capsules)
        with _quietly():
            self._h3.send_data(self._stream_id, data)

    def close(self) -> None:
        """End the session: FIN on the CONNECT stream (if the request was sent)."""
        if self._state is ClientState.CLOSED:
            return
        sent = self._state is not ClientState.WAITING_SETTINGS
        self._move(ClientState.CLOSED)
        if sent:
            with _quietly():
                self._h3.send_data(self._stream_id, b"", end_stream=True)

    # ------------------------------------------------------------------- receiving

    def receive(self, event: QuicEvent) -> list[ClientEvent]:
        """The session events one QUIC event leads to."""
        if type(event) is DatagramReceived:
            return [self._datagram(event.data)]
        if self._terminated:
            return []
        if isinstance(event, ConnectionTerminated):
            self._terminated = True
            out: list[ClientEvent] = []
            if self._state in (ClientState.REQUESTED, ClientState.OPEN):
                self._state = ClientState.CLOSED
                error = event.error_code not in _NO_ERRORS
                out.append(
                    SessionClosed(self._stream_id, event.reason or "connection closed", error)
                )
            self._state = ClientState.CLOSED
            out.append(_terminated(event))
            return out
        out = []
        for h3_event in self._h3.handle_event(event):
            if isinstance(h3_event, SettingsReceived):
                self._settings(out)
            elif getattr(h3_event, "stream_id", None) == self._stream_id:
                self._stream_event(h3_event, out)
        return out

    def _datagram(self, data: bytes) -> PacketDropped | PacketReceived:
        prefix = self._prefix
        if prefix and data.startswith(prefix):
            stream_id, packet = self._stream_id, data[len(prefix) :]
        else:
            stream_id, split = _split_datagram(data)
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
        self._prefix = _datagram_prefix(self._stream_id)
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
            with _quietly():
                self._quic.reset_stream(stream_id, ErrorCode.H3_REQUEST_CANCELLED)
            reason = _reset_reason("the relay", event.error_code)
            out.append(SessionClosed(stream_id, reason, event.error_code not in _NO_ERRORS))
        elif isinstance(event, SendingStopped):
            with _quietly():
                self._quic.reset_stream(stream_id, event.error_code)
            if self._state is ClientState.REQUESTED and event.error_code in _NO_ERRORS:
                # RFC 9114 §4.1.1: the relay needs no more of the request, and its answer
                # (a refusal, most likely) is on its way: wait for it.
                self._stopped = event.error_code
                return
            self._move(ClientState.CLOSED)
            reason = _stop_reason("the relay", event.error_code)
            out.append(SessionClosed(stream_id, reason, event.error_code not in _NO_ERRORS))

    def _response(self, headers: Headers, out: list[ClientEvent]) -> None:
        for name, value in headers:
            if name == b":status" and value.startswith(b"1") and len(value) == 3:
                return  # interim response: the final one follows
        try:
            validate_connect_ip_response(headers)
        except RequestError as exc:
            # The request is over; the relay may already have reset our side with STOP_SENDING.
            with _quietly():
                self._quic.reset_stream(self._stream_id, ErrorCode.H3_REQUEST_CANCELLED)
            self._refused(f"the relay refused the CONNECT-IP request: {exc}", exc.status, out)
            return
        answered = _mode_header(headers)
        if answered is not None and (
            answered is PacketMode.STREAM or self._h3.peer_supports_datagrams()
        ):
            self._mode = answered
        self._move(ClientState.OPEN)
        out.append(SessionAccepted(self._mode, headers))
        if self._stopped is not None:  # accepted, yet it will not read what we send
            self._move(ClientState.CLOSED)
            out.append(
                SessionClosed(self._stream_id, _stop_reason("the relay", self._stopped), False)
            )

    def _data(self, data: bytes, ended: bool, out: list[ClientEvent]) -> None:
        if self._state is not ClientState.OPEN:
            return  # DATA before the response never gets here: HTTP/3 refuses it
        stream_id = self._stream_id
        try:
            capsules = self._decoder.feed(data) if data else []
            if ended:
                self._decoder.eof()
        except DecodeError as exc:
            self._move(ClientState.CLOSED)
            with _quietly():
                self._quic.reset_stream(stream_id, ErrorCode.H3_MESSAGE_ERROR)
            if not ended:
                with _quietly():
                    self._quic.stop_stream(stream_id, ErrorCode.H3_MESSAGE_ERROR)
            out.append(SessionClosed(stream_id, f"malformed capsule from the relay: {exc}", True))
            return
        for capsule in capsules:
            if type(capsule) is DatagramCapsule:
                out.append(_capsule_packet(stream_id, capsule))
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
            with _quietly():
                self._h3.send_data(stream_id, b"", end_stream=True)
            out.append(SessionClosed(stream_id, "the relay ended the CONNECT-IP stream", False))
