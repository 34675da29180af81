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

Beside its session, a client may ask plain HTTP/3 questions on the same connection
(:meth:`ClientSession.request` -> :class:`ResponseReceived` or :class:`RequestFailed`); a
server made with ``requests=True`` hands them to its caller as :class:`RequestReceived` and
answers with :meth:`ServerConnection.respond`. Without it, they are refused (405) as before.

Events of one ``receive`` call come in wire order, so a caller that handles them in order
sees, say, :class:`SessionRequested` before the packets of that session. Events about a
session the caller rejected or closed earlier in the same list may still follow: ignore
them. ``accept``/``reject``/``close_session`` on a session the peer already closed (its
:class:`SessionClosed` is in the list) do nothing.
"""

from zgate_proto.engines.base import SendStatus
from zgate_proto.session._client import ClientSession, ClientState
from zgate_proto.session._events import (
    DATAGRAM_OVERHEAD,
    MODE_HEADER,
    AddressesAssigned,
    AddressRequested,
    ClientEvent,
    ConnectionClosed,
    DropReason,
    PacketDropped,
    PacketMode,
    PacketReceived,
    RequestFailed,
    RequestReceived,
    RequestRejected,
    ResponseReceived,
    RoutesAdvertised,
    ServerEvent,
    SessionAccepted,
    SessionClosed,
    SessionError,
    SessionEvent,
    SessionRefused,
    SessionRequested,
)
from zgate_proto.session._server import ServerConnection, ServerSessionState

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
    "RequestFailed",
    "RequestReceived",
    "RequestRejected",
    "ResponseReceived",
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
