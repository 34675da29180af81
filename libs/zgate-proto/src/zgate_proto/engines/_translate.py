"""zgate's events from an engine whose event classes have aioquic's names and fields.

qh3 is a fork of aioquic: its event classes have the same names and fields as aioquic's but
are distinct types. Both adapters translate the less frequent events through one table built
from their engine's events module; the packet path (stream data, DATAGRAM frames) stays
written out in each adapter, and so does what differs: how each engine reports its close.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

from zgate_proto.engines.base import (
    ConnectionIdIssued,
    ConnectionIdRetired,
    HandshakeCompleted,
    QuicEvent,
    StopSendingReceived,
    StreamReset,
)

__all__ = ["Translation", "rare_events"]

#: An engine event's type -> the function making zgate's event of it.
Translation = dict[type, Callable[[Any], QuicEvent]]


def rare_events(events: ModuleType) -> Translation:
    """The table for ``events`` (``aioquic.quic.events`` or ``qh3.quic.events``)."""
    return {
        events.StreamReset: lambda e: StreamReset(e.stream_id, e.error_code),
        events.StopSendingReceived: lambda e: StopSendingReceived(e.stream_id, e.error_code),
        events.ConnectionIdIssued: lambda e: ConnectionIdIssued(e.connection_id),
        events.ConnectionIdRetired: lambda e: ConnectionIdRetired(e.connection_id),
        events.HandshakeCompleted: lambda e: HandshakeCompleted(e.alpn_protocol),
    }
