"""A minimal HTTP/3 (RFC 9114) endpoint over one :class:`~zgate_proto.engines.base.QuicConn`.

Just what CONNECT-IP needs: request streams carrying HEADERS and DATA frames, the control
stream with SETTINGS, and QPACK (RFC 9204) through ``pylsqpack``. No server push, no
priorities. Sans-IO and engine-independent: it only calls the ``QuicConn`` interface and
is fed the engine's zgate events through :meth:`H3Connection.handle_event`.

We advertise a QPACK dynamic table of capacity 0, so peers encode our headers with the
static table and literals only, and we never use the dynamic table when encoding either:
headers are sent once per session, far off the hot path, and no stream can ever block.

A peer that breaks the protocol gets the connection closed with the HTTP/3 error code of
RFC 9114 §8.1 (or RFC 9204 §6 for QPACK); after that every event is ignored.

HTTP datagrams do not pass through here: the session layer frames them itself
(:mod:`zgate_proto.session`).
"""

from zgate_proto.http3._connection import H3Connection
from zgate_proto.http3._events import (
    DataReceived,
    H3Event,
    HeadersReceived,
    SendingStopped,
    SettingsReceived,
    StreamEvent,
    StreamWasReset,
)
from zgate_proto.http3._frames import (
    MAX_FRAME_SIZE,
    ErrorCode,
    FrameType,
    Headers,
    Setting,
    StreamType,
    encode_frame,
)

__all__ = [
    "MAX_FRAME_SIZE",
    "DataReceived",
    "ErrorCode",
    "FrameType",
    "H3Connection",
    "H3Event",
    "Headers",
    "HeadersReceived",
    "SendingStopped",
    "Setting",
    "SettingsReceived",
    "StreamEvent",
    "StreamType",
    "StreamWasReset",
    "encode_frame",
]
