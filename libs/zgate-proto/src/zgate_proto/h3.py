"""The thin aioquic layer: HTTP/3 with extended CONNECT and HTTP datagrams, and one
CONNECT-IP stream that carries IP packets in either of the two standard modes.

Still sans-IO: nothing here owns a socket or a clock. The caller feeds QUIC events into
:class:`ConnectIpH3Connection` and pulls datagrams out of the QUIC connection as usual.

Superseded by :mod:`zgate_proto.http3` and :mod:`zgate_proto.session`, whose PacketMode,
MODE_HEADER and DATAGRAM_OVERHEAD (and engines.base's SendStatus) are re-exported here, so
old and new code share one of each until the last user of this module moves over.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aioquic.buffer import encode_uint_var
from aioquic.h3.connection import H3Connection, Setting
from aioquic.quic.connection import QuicConnection

from zgate_proto.capsules import (
    Capsule,
    CapsuleDecoder,
    DatagramCapsule,
    encode_capsule,
    encode_datagram_capsule,
)
from zgate_proto.datagram import CONTEXT_ID_IP, decode_ip_datagram
from zgate_proto.engines.base import SendStatus
from zgate_proto.session import DATAGRAM_OVERHEAD, MODE_HEADER, PacketMode

__all__ = [
    "DATAGRAM_OVERHEAD",
    "MODE_HEADER",
    "ConnectIpH3Connection",
    "ConnectIpStream",
    "PacketMode",
    "SendStatus",
    "StreamInput",
]


class ConnectIpH3Connection(H3Connection):
    """HTTP/3 that advertises SETTINGS_ENABLE_CONNECT_PROTOCOL and SETTINGS_H3_DATAGRAM
    (RFC 9220, RFC 9297) without WebTransport."""

    def _get_local_settings(self) -> dict[int, int]:
        settings = super()._get_local_settings()
        settings[Setting.ENABLE_CONNECT_PROTOCOL] = 1
        settings[Setting.H3_DATAGRAM] = 1
        return settings

    @property
    def quic(self) -> QuicConnection:
        """The QUIC connection this HTTP/3 connection runs on."""
        return self._quic

    @property
    def peer_settings_received(self) -> bool:
        """Whether the peer's SETTINGS frame has arrived."""
        return self.received_settings is not None

    def peer_supports_extended_connect(self) -> bool:
        """Whether the peer sent SETTINGS_ENABLE_CONNECT_PROTOCOL = 1 (RFC 9220 §3)."""
        settings = self.received_settings or {}
        return settings.get(Setting.ENABLE_CONNECT_PROTOCOL) == 1

    def peer_supports_datagrams(self) -> bool:
        """Whether HTTP datagrams may be sent: SETTINGS_H3_DATAGRAM = 1 and a non-zero
        max_datagram_frame_size transport parameter (RFC 9297 §2.1.1)."""
        settings = self.received_settings or {}
        remote_max = self._quic._remote_max_datagram_frame_size
        return settings.get(Setting.H3_DATAGRAM) == 1 and bool(remote_max)


@dataclass(frozen=True, slots=True)
class StreamInput:
    """What arrived on the CONNECT stream: capsules, and whether the peer ended it."""

    capsules: list[Capsule]
    ended: bool


class ConnectIpStream:
    """One CONNECT-IP request stream: sends packets in its mode, decodes what arrives.

    The datagram queue of aioquic is unbounded; this bounds it (``max_queued``) and checks
    every datagram's size against the path (``max_datagram_size``) before queuing it.
    """

    def __init__(
        self,
        h3: ConnectIpH3Connection,
        stream_id: int,
        mode: PacketMode,
        *,
        max_queued: int = 512,
        max_capsule_size: int = 65536 + 64,
        max_stream_backlog: int = 256 * 1024,
    ) -> None:
        self.h3 = h3
        self.quic = h3.quic
        self.stream_id = stream_id
        self.mode = mode
        self.max_queued = max_queued
        self.max_stream_backlog = max_stream_backlog
        self._sender: Any = None
        self.closed = False
        self._decoder = CapsuleDecoder(max_capsule_size=max_capsule_size)
        # Quarter stream ID then context ID 0: the fixed head of every HTTP datagram here.
        self._datagram_prefix = encode_uint_var(stream_id // 4) + encode_uint_var(CONTEXT_ID_IP)
        self._pending = self.quic._datagrams_pending

    @property
    def max_datagram_packet(self) -> int:
        """The largest IP packet that fits one QUIC datagram on this path."""
        return self.quic._max_datagram_size - DATAGRAM_OVERHEAD - len(self._datagram_prefix)

    @property
    def queue_depth(self) -> int:
        """Datagrams waiting in the QUIC connection's send queue."""
        return len(self._pending)

    @property
    def stream_backlog(self) -> int:
        """Bytes written on the CONNECT stream and not yet sent (stream mode's queue)."""
        sender = self._sender
        if sender is None:
            stream = self.quic._streams.get(self.stream_id)
            if stream is None:
                return 0
            sender = self._sender = stream.sender
        return int(sender._buffer_stop - sender.next_offset)

    def send_packet(self, packet: bytes) -> SendStatus:
        """Queue one IP packet for the peer in this stream's mode."""
        if self.closed:
            return SendStatus.CLOSED
        if self.mode is PacketMode.DATAGRAM:
            if len(packet) > self.max_datagram_packet:
                return SendStatus.TOO_BIG
            if len(self._pending) >= self.max_queued:
                return SendStatus.QUEUE_FULL
            self._pending.append(self._datagram_prefix + packet)
            return SendStatus.SENT
        # aioquic buffers stream data without limit: under overload that is seconds of
        # queueing delay for every packet. Drop at the tail instead, like a router queue.
        if self.stream_backlog > self.max_stream_backlog:
            return SendStatus.QUEUE_FULL
        self.h3.send_data(
            self.stream_id, encode_datagram_capsule(b"\x00" + packet), end_stream=False
        )
        return SendStatus.SENT

    def send_capsules(self, capsules: Sequence[Capsule]) -> None:
        """Send control capsules (ADDRESS_ASSIGN, ROUTE_ADVERTISEMENT, ...) on the stream."""
        if not self.closed and capsules:
            data = b"".join(encode_capsule(c) for c in capsules)
            self.h3.send_data(self.stream_id, data, end_stream=False)

    def receive_data(self, data: bytes, stream_ended: bool) -> StreamInput:
        """Decode capsules from CONNECT stream data. Raises DecodeError on malformed input."""
        capsules = self._decoder.feed(data) if data else []
        if stream_ended:
            self._decoder.eof()  # a capsule cut short by FIN is malformed (RFC 9297 §3.3)
        return StreamInput(capsules=capsules, ended=stream_ended)

    @staticmethod
    def ip_packet_from_datagram(payload: bytes) -> bytes | None:
        """The IP packet in an HTTP datagram payload, or None if its context ID is not 0.

        Raises DecodeError if the context ID is malformed (e.g. an empty payload).
        """
        return decode_ip_datagram(payload)

    @staticmethod
    def ip_packet_from_capsule(capsule: DatagramCapsule) -> bytes | None:
        """The IP packet in a DATAGRAM capsule, or None if its context ID is not 0."""
        return ConnectIpStream.ip_packet_from_datagram(capsule.payload)

    def close(self) -> None:
        """End our side of the stream (FIN); further packets are refused."""
        if not self.closed:
            self.closed = True
            # The stream may already be gone; closing is best effort.
            with contextlib.suppress(Exception):
                self.h3.send_data(self.stream_id, b"", end_stream=True)
