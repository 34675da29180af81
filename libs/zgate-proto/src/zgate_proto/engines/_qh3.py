"""The qh3 engine adapter: :class:`Qh3Conn` is a :class:`~zgate_proto.engines.base.QuicConn`
over qh3's ``QuicConnection`` (a Python facade over a compiled Rust packet core); ``ENGINE``
makes them.

This module and the client-certificate shim (:mod:`zgate_proto.engines._qh3_mtls`) are the
only places that touch qh3's private parts, all written against qh3 2.1.0 exactly (checked at
import). What the adapter adds to qh3, and why:

- **DATAGRAM frames under congestion control.** qh3's core sends every DATAGRAM frame it is
  given at once, whatever the congestion window (thousands of frames in one flush, megabytes
  in flight against a window of a few packets). The adapter keeps its own bounded queue
  (``datagram_queue``; fq-codel or fifo, :mod:`zgate_proto.fq`) and hands frames to the core
  at each flush only
  while bytes in flight plus the frame fit the window (``_core.congestion_window`` and
  ``_core.bytes_in_flight``). While stream data waits, datagrams get half the free window, so
  a datagram flood cannot starve the CONNECT stream. A frame bigger than one packet would sit
  at the head of the core's queue for ever: frames are checked against
  :attr:`Qh3Conn.max_datagram_payload` when queued and again when handed over.
- **"packet builder capacity exhausted".** qh3 counts only the QUIC packet bytes of a client's
  first datagram (not the padding an aioquic client puts after the packet) toward the
  anti-amplification budget; the next build then does not fit, the core raises, and qh3's
  ``datagrams_to_send`` turns that into INTERNAL_ERROR and drops what it had built. A failed
  build consumes nothing, so :meth:`Qh3Conn.flush` polls the core's transmit itself, keeps
  what was built, and treats this one error as back-pressure (the handshake then completes at
  once instead of after a timer).
- **Close reported when it starts.** qh3 reports ConnectionTerminated only after the closing
  period; zgate wants it as soon as either side starts the close (``_close_event``), with who
  started it (the core's ``draining`` state: the peer did).
- **Batched receive.** Once the handshake is done, :meth:`Qh3Conn.feed` only collects
  datagrams; they go to the core in one ``receive_many_datagrams`` call (one crossing into
  Rust per batch: about 0.9 µs per datagram instead of 2.4 µs) before anything observes the
  connection.
- Events are taken straight from qh3's queue (``_events``) and translated; the first one is a
  ConnectionIdIssued for the connection's own initial ID (qh3 issues none for it), the same
  convention as the aioquic adapter.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

import qh3
from qh3.quic import events as qe
from qh3.quic.configuration import QuicConfiguration
from qh3.quic.connection import QuicConnection, QuicConnectionError
from qh3.quic.packet import QuicErrorCode

from zgate_pki import Identity
from zgate_proto.engines._qh3_mtls import (
    SUPPORTED_QH3_VERSION,
    ClientAuthenticator,
    MtlsServerConnection,
    build_server_configuration,
)
from zgate_proto.engines._translate import rare_events
from zgate_proto.engines.base import (
    Address,
    ClientConfig,
    ConnectionIdIssued,
    ConnectionTerminated,
    ConnStats,
    DatagramReceived,
    QuicConn,
    QuicEvent,
    SendStatus,
    ServerConfig,
    StreamDataReceived,
    require_version,
)
from zgate_proto.errors import DecodeError
from zgate_proto.fq import FifoQueue, PacketQueue, make_queue
from zgate_proto.quic_header import LongPacketType, parse_header

__all__ = ["DATAGRAM_PACKET_OVERHEAD", "ENGINE", "Qh3Conn", "Qh3Engine"]

_RARE_EVENTS: Final = rare_events(qe)

require_version("qh3", qh3.__version__, SUPPORTED_QH3_VERSION)

logger = logging.getLogger(__name__)

#: Bytes a 1-RTT packet carrying one DATAGRAM frame adds around the frame, at worst: short
#: header (1) + connection ID (up to 20) + packet number (up to 4) + AEAD tag (16); the same
#: figure as the aioquic adapter, so both engines agree on the largest payload.
DATAGRAM_PACKET_OVERHEAD: Final = 41
#: What one admitted frame is charged against the congestion window on top of its payload
#: (packet overhead, frame type and length).
_FRAME_CHARGE: Final = DATAGRAM_PACKET_OVERHEAD + 3
#: The one core error that means "cannot build more now" (see the module docstring).
_CAPACITY_EXHAUSTED: Final = "packet builder capacity exhausted"
#: CONNECTION_CLOSE code for a TLS decode_error alert (RFC 9001 section 4.8).
_DECODE_ERROR: Final = QuicErrorCode.CRYPTO_ERROR + 50

_SENT: Final = SendStatus.SENT
_TOO_BIG: Final = SendStatus.TOO_BIG
_QUEUE_FULL: Final = SendStatus.QUEUE_FULL
_CLOSED: Final = SendStatus.CLOSED


def _varint_size(value: int) -> int:
    return 1 if value < 0x40 else 2 if value < 0x4000 else 4 if value < 0x40000000 else 8


def _max_payload(max_datagram_size: int, peer_max_frame: int | None) -> int:
    """The largest DATAGRAM frame payload that fits one packet and the peer's limit."""
    if not peer_max_frame:
        return 0
    # The frame is type (1) + length varint + payload; the peer's limit covers all three.
    room = min(max_datagram_size - DATAGRAM_PACKET_OVERHEAD, peer_max_frame)
    return max(room - 1 - _varint_size(room), 0)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Qh3Conn:
    """One qh3 connection behind zgate's :class:`~zgate_proto.engines.base.QuicConn`.

    After the handshake :meth:`feed` only collects datagrams; every other method hands the
    collection to qh3 first, so the caller sees no difference except the cost (feed a
    wake-up's datagrams, then take events and flush, as the pump does).
    """

    __slots__ = (
        "_auth",
        "_dgrams",
        "_dropped_frames",
        "_events",
        "_max_payload",
        "_out",
        "_ping_uid",
        "_quic",
        "_rx",
        "_rx_addr",
        "_rx_now",
        "_terminated",
        "_termination",
        "is_client",
        "peer_address",
    )

    def __init__(
        self,
        quic: QuicConnection,
        addr: Address,
        datagram_queue: int | PacketQueue[bytes],
        authenticator: ClientAuthenticator | None = None,
    ) -> None:
        self._quic = quic
        self._auth = authenticator
        self.is_client: bool = quic.configuration.is_client
        #: Where :meth:`flush`'s datagrams go: refreshed from each transmit (qh3 follows a
        #: validated migration; the protocol asks for an attribute).
        self.peer_address: Address = addr
        self._events: deque[qe.QuicEvent] = quic._events
        #: Our own events, given before qh3's (the initial connection ID).
        self._out: deque[QuicEvent] = deque([ConnectionIdIssued(quic.host_cid)])
        #: DATAGRAM frames waiting for the window (a bare limit: a FIFO of that size).
        self._dgrams: PacketQueue[bytes] = (
            FifoQueue(datagram_queue) if isinstance(datagram_queue, int) else datagram_queue
        )
        self._max_payload = 0
        self._dropped_frames = 0
        self._rx: list[bytes] = []
        self._rx_addr: Address = addr
        self._rx_now = 0.0
        self._ping_uid = 0
        self._termination: ConnectionTerminated | None = None
        self._terminated = False

    # ------------------------------------------------------------------------ input

    def feed(self, data: bytes, addr: Address, now: float) -> None:
        """One UDP payload. After the handshake it is only collected (see the module
        docstring); qh3 drops what it cannot parse."""
        quic = self._quic
        if quic._handshake_complete:
            if self._rx and addr != self._rx_addr:
                self._receive()
            self._rx.append(data)
            self._rx_addr = addr
            self._rx_now = now
            return
        if self._rx:
            self._receive()
        try:
            quic.receive_datagram(data, addr, now)
        except Exception as exc:
            self._input_failed(exc)

    def _receive(self) -> None:
        """Hand the collected datagrams to qh3 in one call."""
        batch = self._rx
        self._rx = []
        try:
            self._quic.receive_many_datagrams(batch, self._rx_addr, self._rx_now)
        except Exception as exc:
            self._input_failed(exc)

    def _input_failed(self, exc: Exception) -> None:
        """Input never raises into the pump. qh3 drops what fails to decrypt without a
        word, so what raises here came authenticated from the peer: a handshake message qh3
        could not parse ends the handshake (decode_error); anything else is dropped."""
        quic = self._quic
        if quic._handshake_complete or quic._close_event is not None or quic._core is None:
            logger.debug("qh3 dropped a datagram: %r", exc)
            return
        with contextlib.suppress(QuicConnectionError):
            quic.close(_DECODE_ERROR, None, "malformed handshake message")
        if self._auth is not None:
            self._auth.refuse_malformed(repr(exc))
        self._note_close()

    def handle_timer(self, now: float) -> None:
        """Loss detection, ACK delay, idle timeout, end of the closing period."""
        if self._rx:
            self._receive()
        try:
            self._quic.handle_timer(now)
        except QuicConnectionError as exc:
            self._fail(exc)

    def next_event(self) -> QuicEvent | None:
        """The next event, translated; our ConnectionTerminated once the close started."""
        if self._rx:
            self._receive()
        if self._out:
            return self._out.popleft()
        if self._terminated:
            return None
        events = self._events
        while events:
            event = events.popleft()
            kind = type(event)
            if kind is qe.DatagramFrameReceived:
                return DatagramReceived(event.data)  # type: ignore[attr-defined]
            if kind is qe.StreamDataReceived:
                return StreamDataReceived(event.stream_id, event.data, event.end_stream)  # type: ignore[attr-defined]
            translated = self._translate(event)
            if translated is not None:
                return translated
        if self._quic._close_event is not None:
            return self._terminate()
        return None

    def _translate(self, event: qe.QuicEvent) -> QuicEvent | None:
        """The less frequent events (None: nothing for zgate, take the next one)."""
        translate = _RARE_EVENTS.get(type(event))
        if translate is not None:
            return translate(event)
        if isinstance(event, qe.ConnectionTerminated):
            return self._terminate()
        return None  # ProtocolNegotiated, PingAcknowledged

    def _terminate(self) -> ConnectionTerminated | None:
        """Our ConnectionTerminated, once: nothing follows it."""
        termination = self._note_close()
        if self._terminated or termination is None:
            return None
        self._terminated = True
        self._events.clear()
        return termination

    def _note_close(self) -> ConnectionTerminated | None:
        """Record the close qh3 has started (or the peer has), the first time it is seen."""
        if self._termination is None:
            quic = self._quic
            event = quic._close_event
            if event is None:
                return None
            core = quic._core
            self._termination = ConnectionTerminated(
                error_code=event.error_code,
                reason=event.reason_phrase,
                by_peer=core is not None and core.state == "draining",
                handshake_done=bool(quic._handshake_complete),
            )
            self._dgrams.clear()
            if self._auth is not None:
                self._auth.note_termination(event.error_code)
        return self._termination

    def _fail(self, exc: QuicConnectionError) -> None:
        """The core failed for a reason other than back-pressure: close the connection."""
        if self._quic._close_event is not None:
            logger.debug("qh3 failed while closing: %s", exc)  # once per flush: keep quiet
            return
        logger.warning("qh3 connection failed: %s", exc)
        with contextlib.suppress(QuicConnectionError):
            self._quic.close(QuicErrorCode.INTERNAL_ERROR, None, exc.reason_phrase)
        self._note_close()

    # ----------------------------------------------------------------------- output

    def flush(self, now: float) -> list[tuple[bytes, Address]]:
        """Admit queued DATAGRAM frames the window allows, then take every datagram the
        core can build now (back-pressure ends the list, never raises)."""
        if self._rx:
            self._receive()
        quic = self._quic
        core = quic._core
        if core is None:
            return []
        if self._dgrams:
            self._admit(core, now)
        out: list[tuple[bytes, Address]] = []
        poll = core.poll_transmit
        while True:
            try:
                transmit = poll(now)
            except Exception as exc:  # flush never raises: back-pressure, or a broken core
                if not (isinstance(exc, RuntimeError) and str(exc) == _CAPACITY_EXHAUSTED):
                    self._fail(QuicConnectionError(QuicErrorCode.INTERNAL_ERROR, None, str(exc)))
                break
            if transmit is None:
                break
            out.append((transmit[0], transmit[1]))
        if out:
            self.peer_address = out[-1][1]
        if quic._close_event is not None:
            self._note_close()
        return out

    def _admit(self, core: Any, now: float) -> None:
        """Hand frames to the core while they fit the free congestion window."""
        if not self._quic._handshake_complete or self._quic._close_event is not None:
            return
        room = core.congestion_window - core.bytes_in_flight
        if room <= 0:
            return
        if core.get_send_buffer_size(None):
            room //= 2  # leave stream data its share
        limit = self._current_max_payload()
        frames = self._dgrams
        send = core.send_datagram
        while True:
            payload = frames.pop(now)
            if payload is None:
                break
            size = len(payload)
            if size + _FRAME_CHARGE > room:
                frames.unpop(payload, size)
                break
            if size > limit:
                self._dropped_frames += 1  # the path shrank under it
                continue
            send(payload)
            room -= size + _FRAME_CHARGE

    def deadline(self) -> float | None:
        """qh3's timer."""
        if self._rx:
            self._receive()
        return self._quic.get_timer()

    # -------------------------------------------------------------- DATAGRAM frames

    def _current_max_payload(self) -> int:
        quic = self._quic
        core = quic._core
        if core is None or not quic._handshake_complete:
            return 0
        self._max_payload = _max_payload(core.active_path[5], quic._remote_max_datagram_frame_size)
        return self._max_payload

    @property
    def max_datagram_payload(self) -> int:
        """The largest DATAGRAM payload that fits one packet on the current path (0: the
        peer takes none, or the handshake has not told yet)."""
        if self._rx:
            self._receive()
        return self._current_max_payload()

    @property
    def peer_max_datagram_frame_size(self) -> int:
        """The peer's max_datagram_frame_size transport parameter (0: none, or not yet)."""
        if self._rx:
            self._receive()
        return self._quic._remote_max_datagram_frame_size or 0

    @property
    def datagrams_queued(self) -> int:
        """DATAGRAM frames accepted and not handed to the core yet."""
        return len(self._dgrams)

    def send_datagram(self, payload: bytes, now: float | None = None, flow: int = 0) -> SendStatus:
        """Queue one DATAGRAM frame: bounded, size-checked, sent as the window allows."""
        if self._termination is not None or self._quic._close_event is not None:
            return _CLOSED
        size = len(payload)
        if size > self._max_payload and size > self._current_max_payload():
            return _TOO_BIG
        if not self._dgrams.push(payload, size, flow, now):
            return _QUEUE_FULL
        return _SENT

    # ---------------------------------------------------------------------- streams

    def next_stream_id(self, unidirectional: bool = False) -> int:
        """The ID of the next stream we may open."""
        return self._quic.get_next_available_stream_id(is_unidirectional=unidirectional)

    def send_stream(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Queue bytes on a stream (qh3 buffers without limit: see stream_backlog).
        ValueError when the stream cannot take them (finished, reset, not ours)."""
        if self.closed:
            return
        try:
            self._quic.send_stream_data(stream_id, data, end_stream)
        except QuicConnectionError as exc:
            raise ValueError(f"cannot send on stream {stream_id}: {exc.reason_phrase}") from None

    def stream_backlog(self, stream_id: int) -> int:
        """Bytes queued on one of our streams and not sent yet (0 for an unknown stream)."""
        try:
            return self._quic.get_send_buffer_size(stream_id)
        except (QuicConnectionError, ValueError):
            return 0

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        """RESET_STREAM (ValueError when the stream cannot be reset)."""
        if self.closed:
            return
        try:
            self._quic.reset_stream(stream_id, error_code)
        except QuicConnectionError as exc:
            raise ValueError(f"cannot reset stream {stream_id}: {exc.reason_phrase}") from None

    def stop_stream(self, stream_id: int, error_code: int) -> None:
        """STOP_SENDING (ValueError when the stream cannot be stopped)."""
        if self.closed:
            return
        try:
            self._quic.stop_stream(stream_id, error_code)
        except QuicConnectionError as exc:
            raise ValueError(f"cannot stop stream {stream_id}: {exc.reason_phrase}") from None

    # ------------------------------------------------------------------- connection

    def ping(self) -> None:
        """A PING frame."""
        if self.closed or self._quic._core is None:
            return
        self._ping_uid += 1
        self._quic.send_ping(self._ping_uid)

    @property
    def handshake_done(self) -> bool:
        """Our side of the TLS handshake has completed (a server: the client's certificate
        was verified)."""
        if self._rx:
            self._receive()
        return bool(self._quic._handshake_complete)

    @property
    def closed(self) -> bool:
        """Closing has started (either side)."""
        if self._rx:
            self._receive()
        return self._termination is not None or self._quic._close_event is not None

    @property
    def peer_chain(self) -> tuple[bytes, ...]:
        """The peer's certificates as DER, leaf first (empty until they arrive). A client
        sees the relay's chain as soon as it arrived, even when it then refused it: the
        agent names what it holds when it explains the refusal. A server exposes the
        client's chain only once it was verified."""
        if self._auth is not None:
            return self._auth.chain if self._auth.done else ()
        leaf = self._quic.get_peercert()
        if leaf is None:
            return ()
        return tuple(c.public_bytes() for c in [leaf, *self._quic.get_issuercerts()])

    @property
    def peer_identity(self) -> Identity | None:
        """Server side: the client's verified identity once the handshake completed."""
        return self._auth.identity if self._auth is not None else None

    @property
    def refusal(self) -> tuple[str, str] | None:
        """Server side: why the handshake was refused."""
        return self._auth.refusal if self._auth is not None else None

    def stats(self) -> ConnStats:
        """RTT, congestion window, bytes in flight and losses from the core's recovery."""
        core = self._quic._core
        drops = self._dgrams.drops
        if core is None:
            return ConnStats(0.0, 0, 0, 0, len(self._dgrams), drops["aqm"], drops["overflow"])
        return ConnStats(
            rtt=core.smoothed_rtt or 0.0,
            cwnd=core.congestion_window,
            bytes_in_flight=core.bytes_in_flight,
            packets_lost=core.loss_total,
            datagrams_queued=len(self._dgrams),
            datagrams_dropped_aqm=drops["aqm"],
            datagrams_dropped_overflow=drops["overflow"],
        )

    def close(self, error_code: int = 0, reason: str = "") -> None:
        """Start closing: the CONNECTION_CLOSE leaves with the next flush."""
        if self._rx:
            self._receive()
        quic = self._quic
        if quic._core is None or quic._close_event is not None:
            return
        try:
            quic.close(error_code, None, reason)
        except QuicConnectionError as exc:
            logger.warning("qh3 could not close the connection: %s", exc)
        self._note_close()


class Qh3Engine:
    """Makes qh3 connections: clients with :meth:`connect`, the relay's with :meth:`accept`
    (client certificate required, see the mTLS shim).

    ``wall_clock`` gives the date client certificates are checked against (the ``now`` of
    the QUIC calls is a monotonic clock); tests inject one.
    """

    __slots__ = ("_server_contexts", "_wall_clock")

    name: str = "qh3"
    version: str = qh3.__version__

    def __init__(self, wall_clock: Callable[[], datetime] = _utcnow) -> None:
        self._wall_clock = wall_clock
        self._server_contexts: dict[tuple[Any, ...], QuicConfiguration] = {}

    def connect(self, config: ClientConfig, addr: Address, now: float) -> Qh3Conn:
        """A client connection with mutual TLS 1.3, its first flight ready to flush."""
        configuration = QuicConfiguration(
            is_client=True,
            alpn_protocols=list(config.alpn),
            # Not None for 0: qh3's client would then advertise 65536.
            max_datagram_frame_size=config.max_datagram_frame_size,
            max_datagram_size=config.max_datagram_size,
            # qh3's client would otherwise probe its way past max_datagram_size (to 1472
            # bytes), which the configuration promises never to send.
            probe_datagram_size=False,
            idle_timeout=config.idle_timeout,
            server_name=config.server_name,
        )
        with open(config.ca_file, "rb"):
            pass  # qh3 reads the CA file only at the handshake: fail here instead
        configuration.load_verify_locations(cafile=str(config.ca_file))
        try:
            configuration.load_cert_chain(config.cert_file, config.key_file)
        except OSError:
            raise
        except Exception as exc:
            # qh3's PEM loaders raise their own errors for malformed files.
            raise ValueError(f"cannot load {config.cert_file} / {config.key_file}: {exc}") from None
        quic = QuicConnection(configuration=configuration)
        quic.connect(addr, now)
        return Qh3Conn(quic, addr, _datagram_queue(config))

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
            connection_id_length=config.connection_id_length,
        )
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
    ) -> QuicConn | None:
        """A server connection for a client's first Initial (or its Initial after a Retry:
        then with the connection IDs the Retry token vouched for), fed with it."""
        configuration = self._server_contexts.get(_context_key(config))
        if configuration is None:
            configuration = self.server_context(config)
        try:
            header = parse_header(data, config.connection_id_length)
        except DecodeError:
            return None
        if header.packet_type is not LongPacketType.INITIAL:
            return None
        if not header.source_cid:
            # qh3 2.1.0's compiled core never adopts an empty source connection ID as the
            # peer's (RFC 9000 section 5.1 allows one; quic-go's clients use one by default):
            # it keeps answering to the client's original destination ID, which the client
            # ignores, and the handshake never completes. Such clients are served by the
            # aioquic engine, on the same certificate and verifier.
            from zgate_proto.engines._aioquic import ENGINE as AIOQUIC

            return AIOQUIC.accept(
                config,
                data,
                addr,
                now,
                original_destination_cid=original_destination_cid,
                retry_source_cid=retry_source_cid,
            )
        authenticator = ClientAuthenticator(config.verifier, config.on_refused, self._wall_clock)
        quic = MtlsServerConnection(
            configuration=configuration,
            original_destination_connection_id=original_destination_cid or header.destination_cid,
            retry_source_connection_id=retry_source_cid,
            authenticator=authenticator,
            reset_token=config.reset_token,
        )
        conn = Qh3Conn(quic, addr, _datagram_queue(config), authenticator)
        conn.feed(data, addr, now)
        if quic._core is None:
            return None  # qh3 would not start a connection from it (version, size)
        return conn

    def reset_tokens_settable(self) -> bool:
        """qh3's compiled core draws the tokens of the connection IDs it issues itself (in
        NEW_CONNECTION_ID frames): only the first ID's token, sent in the transport
        parameters, is the relay's."""
        return False


def _datagram_queue(config: ClientConfig | ServerConfig) -> PacketQueue[bytes]:
    """A connection's DATAGRAM queue, as configured."""
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


#: The qh3 engine (see :func:`zgate_proto.engines.get_engine`).
ENGINE: Final = Qh3Engine()
