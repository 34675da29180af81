"""The aioquic engine adapter: :class:`AioquicConn` is a :class:`~zgate_proto.engines.base.QuicConn`
over aioquic's ``QuicConnection``; ``ENGINE`` makes them.

aioquic's public API lacks what zgate's data path needs, so this module (with the
client-certificate shim in :mod:`zgate_proto.engines._aioquic_mtls`) is the one place that
reads aioquic's private attributes, all of them written against aioquic 1.7.2 exactly
(checked at import, see ``SUPPORTED_AIOQUIC_VERSION``):

- ``_datagrams_pending``: aioquic's DATAGRAM queue is unbounded and ``send_datagram_frame``
  is a method call for a deque append. Under fifo we bound it and append to it directly;
  under fq-codel (the default) frames wait in our own queue (:mod:`zgate_proto.fq`) and are
  moved into aioquic's at each flush only while they fit the free congestion window
  (``_loss.congestion_window`` / ``bytes_in_flight``), as the qh3 adapter does, so aioquic's
  own FIFO stays short and the order in which flows leave is ours;
- ``_max_datagram_size`` and ``_remote_max_datagram_frame_size``: the largest DATAGRAM payload
  that fits one packet (aioquic never splits a frame, and one that cannot fit an empty packet
  stays at the head of the queue for ever, so every frame is checked before it is queued);
- ``_close_event`` and ``_state``: aioquic reports a close only after the closing period (three
  probe timeouts, seconds on a slow path); zgate wants it when it starts, and whether the peer
  started it;
- ``_events``: popped directly (the shim's ``next_event`` override costs a call per event);
- ``_streams[...].sender``: bytes written on a stream and not sent yet;
- ``_loss``: RTT, congestion window, bytes in flight, and a count of packets lost;
- ``tls._peer_certificate`` / ``_peer_certificate_chain``: the peer's certificates;
- ``_handshake_complete``, ``_network_paths``.
"""

from __future__ import annotations

import ssl
from collections import deque
from typing import Any, Final

import aioquic
from aioquic._buffer import Buffer  # aioquic.buffer re-exports it without __all__
from aioquic.buffer import size_uint_var
from aioquic.quic import events as aq
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection, QuicConnectionState
from aioquic.quic.packet import QuicPacketType, pull_quic_header

from zgate_pki import Identity
from zgate_proto.engines._aioquic_mtls import (
    SUPPORTED_AIOQUIC_VERSION,
    MtlsServerConnection,
    build_server_configuration,
)
from zgate_proto.engines._translate import rare_events
from zgate_proto.engines.base import (
    Address,
    ClientConfig,
    ConnectionTerminated,
    ConnStats,
    DatagramReceived,
    QuicEvent,
    SendStatus,
    ServerConfig,
    StreamDataReceived,
    chain_der,
    require_version,
)
from zgate_proto.fq import PacketQueue, make_queue

__all__ = ["DATAGRAM_PACKET_OVERHEAD", "ENGINE", "AioquicConn", "AioquicEngine"]

_RARE_EVENTS: Final = rare_events(aq)

require_version("aioquic", aioquic.__version__, SUPPORTED_AIOQUIC_VERSION)

#: Bytes a 1-RTT packet carrying one DATAGRAM frame adds around the frame, at worst: short
#: header (1) + connection ID (up to 20) + packet number (up to 4) + AEAD tag (16). The frame's
#: own type and length come on top (see :func:`_max_payload`).
DATAGRAM_PACKET_OVERHEAD: Final = 41

_SENT: Final = SendStatus.SENT
_TOO_BIG: Final = SendStatus.TOO_BIG
_QUEUE_FULL: Final = SendStatus.QUEUE_FULL
_CLOSED: Final = SendStatus.CLOSED
#: What one frame admitted to aioquic's queue is charged against the window on top of its
#: payload (packet overhead, frame type and length), as in the qh3 adapter.
_FRAME_CHARGE: Final = DATAGRAM_PACKET_OVERHEAD + 3
_DRAINING: Final = QuicConnectionState.DRAINING
_FIRSTFLIGHT: Final = QuicConnectionState.FIRSTFLIGHT


def _max_payload(max_datagram_size: int, peer_max_frame: int | None) -> int:
    """The largest DATAGRAM frame payload that fits one packet and the peer's limit."""
    if not peer_max_frame:
        return 0
    room = max_datagram_size - DATAGRAM_PACKET_OVERHEAD
    # The frame is type (1) + length varint + payload; the peer's limit covers all three.
    room = min(room, peer_max_frame)
    payload = room - 1 - size_uint_var(room)
    return max(payload, 0)


class AioquicConn:
    """One aioquic connection behind zgate's :class:`~zgate_proto.engines.base.QuicConn`.

    Events: aioquic's are translated one by one as they are taken; its ConnectionTerminated is
    replaced by ours, given as soon as the close starts (after every event queued before it)
    and exactly once. The first event of every connection is a ConnectionIdIssued for the
    connection ID it chose itself (aioquic issues no event for that one), so that whoever
    routes datagrams by connection ID learns every ID from events.
    """

    __slots__ = (
        "_events",
        "_lost",
        "_max_payload",
        "_pending",
        "_ping_uid",
        "_queue",
        "_queue_limit",
        "_quic",
        "_terminated",
        "_termination",
        "is_client",
        "peer_address",
    )

    def __init__(
        self,
        quic: QuicConnection,
        addr: Address,
        datagram_queue: int,
        queue: PacketQueue[bytes] | None = None,
    ) -> None:
        self._quic = quic
        self.is_client: bool = quic.configuration.is_client
        #: The peer's current address: aioquic follows a validated migration, and so does
        #: this attribute, refreshed at every flush (the protocol asks for an attribute).
        self.peer_address: Address = addr
        self._events: deque[aq.QuicEvent] = quic._events
        self._events.appendleft(aq.ConnectionIdIssued(connection_id=quic.host_cid))
        self._pending: deque[bytes] = quic._datagrams_pending
        self._queue_limit = datagram_queue
        #: fq-codel: frames wait here for the window (None: fifo, straight into _pending).
        self._queue = queue
        # Known once the peer's transport parameters are: recomputed when a frame looks big.
        self._max_payload = 0
        self._ping_uid = 0
        #: Our ConnectionTerminated once the close has started; given out once.
        self._termination: ConnectionTerminated | None = None
        self._terminated = False
        self._lost = [0]
        self._count_losses()

    def _count_losses(self) -> None:
        """Count the packets aioquic's recovery gives up on (declared lost, or sent again on
        a probe timeout): aioquic keeps no such counter."""
        loss = self._quic._loss
        on_packets_lost = loss._on_packets_lost
        lost = self._lost

        def counted(**kwargs: Any) -> None:
            packets = kwargs["packets"] = tuple(kwargs["packets"])
            lost[0] += len(packets)
            on_packets_lost(**kwargs)

        loss._on_packets_lost = counted  # type: ignore[method-assign]

    # ------------------------------------------------------------------------ input

    def feed(self, data: bytes, addr: Address, now: float) -> None:
        """One UDP payload; aioquic drops what it cannot parse."""
        quic = self._quic
        quic.receive_datagram(data, addr, now)
        if quic._close_event is not None and self._termination is None:
            self._note_close()

    def handle_timer(self, now: float) -> None:
        """Loss detection, ACK delay, idle timeout, end of the closing period."""
        quic = self._quic
        quic.handle_timer(now)
        if quic._close_event is not None and self._termination is None:
            self._note_close()

    def next_event(self) -> QuicEvent | None:
        """The next event, translated; our ConnectionTerminated after the last one."""
        events = self._events
        while events:
            if self._terminated:
                events.clear()  # nothing follows the termination
                break
            event = events.popleft()
            kind = type(event)
            if kind is aq.StreamDataReceived:
                return StreamDataReceived(event.stream_id, event.data, event.end_stream)  # type: ignore[attr-defined]
            if kind is aq.DatagramFrameReceived:
                return DatagramReceived(event.data)  # type: ignore[attr-defined]
            translated = self._translate(event)
            if translated is not None:
                return translated
        if self._termination is not None and not self._terminated:
            self._terminated = True
            return self._termination
        return None

    def _translate(self, event: aq.QuicEvent) -> QuicEvent | None:
        """The less frequent events (None: nothing for zgate, take the next one)."""
        translate = _RARE_EVENTS.get(type(event))
        if translate is not None:
            return translate(event)
        if isinstance(event, aq.ConnectionTerminated) and self._termination is None:
            # An idle timeout: aioquic starts and ends that close in one go.
            self._note_close()
        return None

    def _note_close(self) -> None:
        """Record the close aioquic has just started (or the peer has)."""
        quic = self._quic
        event = quic._close_event
        assert event is not None
        self._termination = ConnectionTerminated(
            error_code=event.error_code,
            reason=event.reason_phrase,
            by_peer=quic._state is _DRAINING,
            handshake_done=quic._handshake_complete,
        )
        if isinstance(quic, MtlsServerConnection):
            quic.note_termination(event.error_code)

    # ----------------------------------------------------------------------- output

    def flush(self, now: float) -> list[tuple[bytes, Address]]:
        """aioquic's datagrams_to_send (first admitting queued frames the window takes)."""
        quic = self._quic
        if self._queue:
            self._admit(now)
        out: list[tuple[bytes, Address]] = quic.datagrams_to_send(now)
        if quic._close_event is not None and self._termination is None:
            self._note_close()
        paths = quic._network_paths
        if paths:
            self.peer_address = paths[0].addr
        return out

    def _admit(self, now: float) -> None:
        """Move frames from our queue into aioquic's while they fit the free window."""
        quic = self._quic
        if not quic._handshake_complete or quic._close_event is not None:
            return
        loss = quic._loss
        pending = self._pending
        # Frames admitted before and not sent yet hold their share of the window.
        waiting = sum(len(p) for p in pending) + _FRAME_CHARGE * len(pending) if pending else 0
        room = loss.congestion_window - loss.bytes_in_flight - waiting
        queue = self._queue
        assert queue is not None
        while room > 0:
            payload = queue.pop(now)
            if payload is None:
                break
            size = len(payload)
            if size + _FRAME_CHARGE > room:
                queue.unpop(payload, size)
                break
            pending.append(payload)
            room -= size + _FRAME_CHARGE

    def deadline(self) -> float | None:
        """aioquic's get_timer."""
        return self._quic.get_timer()

    # -------------------------------------------------------------- DATAGRAM frames

    @property
    def max_datagram_payload(self) -> int:
        """The largest DATAGRAM payload that fits one packet (0: the peer takes none)."""
        quic = self._quic
        self._max_payload = _max_payload(
            quic._max_datagram_size, quic._remote_max_datagram_frame_size
        )
        return self._max_payload

    @property
    def peer_max_datagram_frame_size(self) -> int:
        """The peer's max_datagram_frame_size transport parameter (0: none, or not yet)."""
        return self._quic._remote_max_datagram_frame_size or 0

    @property
    def datagrams_queued(self) -> int:
        """DATAGRAM frames queued and not sent yet."""
        return len(self._pending) + (len(self._queue) if self._queue is not None else 0)

    def send_datagram(self, payload: bytes, now: float | None = None, flow: int = 0) -> SendStatus:
        """Queue one DATAGRAM frame, bounded and size-checked (fifo: in aioquic's queue)."""
        if self._quic._close_event is not None:  # set by every way a close starts
            return _CLOSED
        size = len(payload)
        if size > self._max_payload and size > self.max_datagram_payload:
            return _TOO_BIG
        if self._queue is not None:
            self._queue.push(payload, size, flow, now)
            return _SENT
        pending = self._pending
        if len(pending) >= self._queue_limit:
            return _QUEUE_FULL
        pending.append(payload)
        return _SENT

    # ---------------------------------------------------------------------- streams

    def next_stream_id(self, unidirectional: bool = False) -> int:
        """The ID of the next stream we may open."""
        return self._quic.get_next_available_stream_id(is_unidirectional=unidirectional)

    def send_stream(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Queue bytes on a stream (aioquic buffers without limit: see stream_backlog)."""
        self._quic.send_stream_data(stream_id, data, end_stream)

    def stream_backlog(self, stream_id: int) -> int:
        """Bytes written on one of our streams and not sent yet."""
        stream = self._quic._streams.get(stream_id)
        if stream is None:
            return 0
        sender = stream.sender
        return sender._buffer_stop - sender.next_offset

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        """RESET_STREAM."""
        self._quic.reset_stream(stream_id, error_code)

    def stop_stream(self, stream_id: int, error_code: int) -> None:
        """STOP_SENDING."""
        self._quic.stop_stream(stream_id, error_code)

    # ------------------------------------------------------------------- connection

    def ping(self) -> None:
        """A PING frame."""
        self._ping_uid += 1
        self._quic.send_ping(self._ping_uid)

    @property
    def handshake_done(self) -> bool:
        """Our side of the TLS handshake has completed."""
        return bool(self._quic._handshake_complete)

    @property
    def closed(self) -> bool:
        """Closing has started (either side)."""
        return self._quic._close_event is not None

    @property
    def peer_chain(self) -> tuple[bytes, ...]:
        """The peer's certificates as DER, leaf first (empty before they arrived)."""
        tls = getattr(self._quic, "tls", None)  # created with the first packet
        if tls is None or tls._peer_certificate is None:
            return ()
        return chain_der([tls._peer_certificate, *tls._peer_certificate_chain])

    @property
    def peer_identity(self) -> Identity | None:
        """Server side: the client's verified identity once the handshake completed."""
        quic = self._quic
        return quic.peer_identity if isinstance(quic, MtlsServerConnection) else None

    @property
    def refusal(self) -> tuple[str, str] | None:
        """Server side: why the handshake was refused."""
        quic = self._quic
        if isinstance(quic, MtlsServerConnection) and quic.refusal_reason is not None:
            return (quic.refusal_reason, quic.refusal_detail or "")
        return None

    def stats(self) -> ConnStats:
        """RTT, congestion window and losses from aioquic's recovery."""
        loss = self._quic._loss
        drops = self._queue.drops if self._queue is not None else {"aqm": 0, "overflow": 0}
        return ConnStats(
            rtt=loss._rtt_smoothed,
            cwnd=loss.congestion_window,
            bytes_in_flight=loss.bytes_in_flight,
            packets_lost=self._lost[0],
            datagrams_queued=self.datagrams_queued,
            datagrams_dropped_aqm=drops["aqm"],
            datagrams_dropped_overflow=drops["overflow"],
        )

    def close(self, error_code: int = 0, reason: str = "") -> None:
        """Start closing: the CONNECTION_CLOSE leaves with the next flush."""
        quic = self._quic
        quic.close(error_code=error_code, reason_phrase=reason)
        if quic._close_event is not None and self._termination is None:
            self._note_close()


class AioquicEngine:
    """Makes aioquic connections: clients with :meth:`connect`, the relay's with
    :meth:`accept` (client certificate required, see the mTLS shim)."""

    __slots__ = ("_server_contexts",)

    name: str = "aioquic"
    version: str = aioquic.__version__

    def __init__(self) -> None:
        self._server_contexts: dict[tuple[Any, ...], QuicConfiguration] = {}

    def connect(self, config: ClientConfig, addr: Address, now: float) -> AioquicConn:
        """A client connection with mutual TLS 1.3, its first flight ready to flush."""
        configuration = QuicConfiguration(
            is_client=True,
            alpn_protocols=list(config.alpn),
            max_datagram_frame_size=config.max_datagram_frame_size or None,
            max_datagram_size=config.max_datagram_size,
            idle_timeout=config.idle_timeout,
            server_name=config.server_name,
            verify_mode=ssl.CERT_REQUIRED,
        )
        try:
            configuration.load_verify_locations(cafile=str(config.ca_file))
            configuration.load_cert_chain(str(config.cert_file), str(config.key_file))
        except (TypeError, IndexError) as exc:
            # aioquic's loader fails this way on some malformed files.
            raise ValueError(f"cannot load {config.cert_file} / {config.key_file}: {exc}") from None
        quic = QuicConnection(configuration=configuration)
        conn = AioquicConn(quic, addr, config.datagram_queue, _datagram_queue(config))
        quic.connect(addr, now)
        return conn

    def server_context(self, config: ServerConfig) -> QuicConfiguration:
        """Load the relay's certificate (again: call it after the files changed) and keep it
        for :meth:`accept`. Raises PkiError when the files are unusable."""
        configuration = build_server_configuration(
            config.cert_file,
            config.key_file,
            alpn=config.alpn,
            max_datagram_frame_size=config.max_datagram_frame_size,
            max_datagram_size=config.max_datagram_size,
            idle_timeout=config.idle_timeout,
        )
        configuration.connection_id_length = config.connection_id_length
        self._server_contexts[_context_key(config)] = configuration
        return configuration

    def accept(
        self,
        config: ServerConfig,
        data: bytes,
        addr: Address,
        now: float,
        *,
        original_destination_cid: bytes | None = None,
        retry_source_cid: bytes | None = None,
    ) -> AioquicConn | None:
        """A server connection for a client's first Initial (or its Initial after a Retry:
        then with the connection IDs the Retry token vouched for), fed with it."""
        configuration = self._server_contexts.get(_context_key(config))
        if configuration is None:
            configuration = self.server_context(config)
        try:
            header = pull_quic_header(
                Buffer(data=data), host_cid_length=config.connection_id_length
            )
        except ValueError:
            return None
        if header.packet_type is not QuicPacketType.INITIAL:
            return None
        quic = MtlsServerConnection(
            configuration=configuration,
            original_destination_connection_id=original_destination_cid or header.destination_cid,
            retry_source_connection_id=retry_source_cid,
            verifier=config.verifier,
            on_refused=config.on_refused,
            reset_token=config.reset_token,
        )
        conn = AioquicConn(quic, addr, config.datagram_queue, _datagram_queue(config))
        conn.feed(data, addr, now)
        if quic._state is _FIRSTFLIGHT:
            # Nothing in it decrypted: aioquic would keep the connection until its idle
            # timeout, a minute of memory for every forged Initial.
            return None
        return conn

    def reset_tokens_settable(self) -> bool:
        """aioquic's host connection IDs are Python objects: every one gets the relay's token."""
        return True


def _datagram_queue(config: ClientConfig | ServerConfig) -> PacketQueue[bytes] | None:
    """fq-codel's queue for a connection's DATAGRAM frames; None for fifo (aioquic's own)."""
    if config.datagram_discipline == "fifo":
        return None
    return make_queue(config.datagram_discipline, config.datagram_queue, config.aqm)


def _context_key(config: ServerConfig) -> tuple[Any, ...]:
    """What the server QuicConfiguration is built from (the verifier is per connection)."""
    return (
        config.cert_file,
        config.key_file,
        config.alpn,
        config.idle_timeout,
        config.max_datagram_size,
        config.max_datagram_frame_size,
        config.connection_id_length,
    )


#: The aioquic engine (see :func:`zgate_proto.engines.get_engine`).
ENGINE: Final = AioquicEngine()
