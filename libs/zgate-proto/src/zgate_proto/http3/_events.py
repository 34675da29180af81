"""The events :meth:`H3Connection.handle_event` returns: frozen, past tense."""

from __future__ import annotations

from dataclasses import dataclass

from zgate_proto.http3._frames import Headers

__all__ = [
    "DataReceived",
    "H3Event",
    "HeadersReceived",
    "SendingStopped",
    "SettingsReceived",
    "StreamEvent",
    "StreamWasReset",
]


@dataclass(frozen=True, slots=True)
class H3Event:
    """Base of the events :meth:`H3Connection.handle_event` returns."""


@dataclass(frozen=True, slots=True)
class SettingsReceived(H3Event):
    """The peer's SETTINGS frame arrived (once per connection)."""

    settings: dict[int, int]


@dataclass(frozen=True, slots=True)
class StreamEvent(H3Event):
    """Base of the events about one request stream."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class HeadersReceived(StreamEvent):
    """A HEADERS frame arrived on a request stream (``stream_ended``: FIN came with it)."""

    headers: Headers
    stream_ended: bool


@dataclass(frozen=True, slots=True)
class DataReceived(StreamEvent):
    """Payload of DATA frames arrived on a request stream; ``data`` may be empty when only
    the FIN arrived (``stream_ended``)."""

    data: bytes
    stream_ended: bool


@dataclass(frozen=True, slots=True)
class StreamWasReset(StreamEvent):
    """The peer reset a request stream (RESET_STREAM): nothing more arrives on it."""

    error_code: int


@dataclass(frozen=True, slots=True)
class SendingStopped(StreamEvent):
    """The peer asked us to stop sending on a request stream (STOP_SENDING)."""

    error_code: int
