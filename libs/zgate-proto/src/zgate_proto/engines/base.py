"""The QUIC engine boundary: what zgate needs from a QUIC implementation, and nothing more.

Relay, agent and connector speak QUIC only through :class:`QuicConn` (one connection) and
:class:`QuicEngine` (makes connections). Each engine (aioquic, qh3) has one adapter module
in this package; every use of that engine's private attributes lives inside its adapter,
next to an exact version pin checked at import.

Sans-IO: a connection owns no socket and no clock. The caller feeds it UDP payloads with
the time (:meth:`QuicConn.feed`), takes its events (:meth:`QuicConn.next_event`), lets it
act (send stream data, DATAGRAM frames) and then takes what it has to send
(:meth:`QuicConn.flush`) and when it wants to be woken (:meth:`QuicConn.deadline`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from zgate_proto.fq import DEFAULT_AQM, AqmConfig

if TYPE_CHECKING:
    from zgate_pki import ChainVerifier, Identity

__all__ = [
    "Address",
    "ClientConfig",
    "ConnStats",
    "ConnectionIdIssued",
    "ConnectionIdRetired",
    "ConnectionTerminated",
    "DatagramReceived",
    "HandshakeCompleted",
    "QuicConn",
    "QuicEngine",
    "QuicEvent",
    "RefusalCallback",
    "SendStatus",
    "ServerConfig",
    "StopSendingReceived",
    "StreamDataReceived",
    "StreamReset",
]

#: A UDP peer address as the socket module gives it: (host, port) or (host, port, flow, scope).
Address = tuple[Any, ...]

#: Called once when the relay refuses a handshake, with (reason, detail); reason is one of
#: zgate_pki.REFUSAL_REASONS, "tls_version" or "handshake_failed".
RefusalCallback = Callable[[str, str], None]


class SendStatus(enum.Enum):
    """What became of a packet or DATAGRAM frame handed over for sending."""

    SENT = "sent"
    TOO_BIG = "too_big"
    QUEUE_FULL = "queue_full"
    CLOSED = "closed"


# --------------------------------------------------------------------------- events
# zgate's own events, frozen and past tense; adapters translate their engine's into these.


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    """Our side of the TLS handshake completed (a server: the client's certificate was
    verified, see :attr:`QuicConn.peer_identity`)."""

    alpn: str | None


@dataclass(frozen=True, slots=True)
class StreamDataReceived:
    """Bytes arrived on a stream, in order (``end_stream``: the peer sent FIN)."""

    stream_id: int
    data: bytes
    end_stream: bool


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The peer reset a stream (RESET_STREAM)."""

    stream_id: int
    error_code: int


@dataclass(frozen=True, slots=True)
class StopSendingReceived:
    """The peer asked us to stop sending on a stream (STOP_SENDING)."""

    stream_id: int
    error_code: int


@dataclass(frozen=True, slots=True)
class DatagramReceived:
    """A QUIC DATAGRAM frame's payload arrived (RFC 9221)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class ConnectionIdIssued:
    """We issued a new connection ID: datagrams carrying it belong to this connection."""

    connection_id: bytes


@dataclass(frozen=True, slots=True)
class ConnectionIdRetired:
    """A connection ID of ours was retired: it no longer names this connection."""

    connection_id: bytes


@dataclass(frozen=True, slots=True)
class ConnectionTerminated:
    """The connection is closing or closed; no more events follow.

    Emitted as soon as the close starts (ours or the peer's), not after the closing period.
    """

    error_code: int
    reason: str
    #: The peer sent the CONNECTION_CLOSE (else we, or our TLS stack, closed it).
    by_peer: bool
    #: Our side of the handshake had completed.
    handshake_done: bool


QuicEvent = (
    HandshakeCompleted
    | StreamDataReceived
    | StreamReset
    | StopSendingReceived
    | DatagramReceived
    | ConnectionIdIssued
    | ConnectionIdRetired
    | ConnectionTerminated
)


# -------------------------------------------------------------------------- configs


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """How an agent or connector dials the relay (mutual TLS 1.3, ALPN h3)."""

    server_name: str
    ca_file: Path
    cert_file: Path
    key_file: Path
    alpn: tuple[str, ...] = ("h3",)
    idle_timeout: float = 60.0
    #: Largest UDP payload we send (1200 is QUIC's minimum and always safe).
    max_datagram_size: int = 1200
    #: Largest DATAGRAM frame we accept (transport parameter; 0 turns DATAGRAM off).
    max_datagram_frame_size: int = 65536
    #: DATAGRAM frames waiting to be sent, at most; more are refused (QUEUE_FULL).
    datagram_queue: int = 512
    #: How they wait (zgate_proto.fq): "fq-codel" (a queue per flow, CoDel on each, the
    #: fattest flow loses past the limit) or "fifo" (one queue, QUEUE_FULL past the limit).
    datagram_discipline: str = "fq-codel"
    aqm: AqmConfig = DEFAULT_AQM


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """How the relay accepts connections: its certificate, and the verifier every client
    certificate must pass (CA, validity, CRL). Handshakes without a client certificate are
    refused; TLS 1.3 only; no session resumption."""

    cert_file: Path
    key_file: Path
    verifier: ChainVerifier
    alpn: tuple[str, ...] = ("h3",)
    idle_timeout: float = 60.0
    max_datagram_size: int = 1200
    max_datagram_frame_size: int = 65536
    datagram_queue: int = 512
    datagram_discipline: str = "fq-codel"  # see ClientConfig
    aqm: AqmConfig = DEFAULT_AQM
    connection_id_length: int = 8
    #: Called once per refused handshake with (reason, detail).
    on_refused: RefusalCallback | None = field(default=None, compare=False)
    #: The stateless reset token (16 bytes) for each connection ID the relay issues
    #: (RFC 9000 §10.3), derived from a key kept across restarts; None: the engine's random.
    reset_token: Callable[[bytes], bytes] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class ConnStats:
    """A connection's path state, for metrics and benchmarks."""

    rtt: float  # smoothed round-trip time, seconds
    cwnd: int  # congestion window, bytes
    bytes_in_flight: int
    packets_lost: int
    datagrams_queued: int
    #: DATAGRAM frames the queue discipline dropped: CoDel ("aqm"), or from the fattest
    #: flow past the limit ("overflow"; a fifo refuses with QUEUE_FULL instead).
    datagrams_dropped_aqm: int = 0
    datagrams_dropped_overflow: int = 0


# ------------------------------------------------------------------------ interfaces


class QuicConn(Protocol):
    """One QUIC connection, client or server side (sans-IO)."""

    is_client: bool

    @property
    def peer_address(self) -> Address:
        """The peer's current address (where :meth:`flush`'s datagrams go)."""

    # ---- input
    def feed(self, data: bytes, addr: Address, now: float) -> None:
        """One UDP payload from ``addr`` (may hold several coalesced QUIC packets).
        Malformed input is dropped by the engine, never raised."""

    def handle_timer(self, now: float) -> None:
        """The deadline from :meth:`deadline` has passed."""

    def next_event(self) -> QuicEvent | None:
        """The next event, or None when there is none left."""

    # ---- output
    def flush(self, now: float) -> list[tuple[bytes, Address]]:
        """UDP payloads to send now. Never raises for back-pressure (an engine that cannot
        build more now simply returns what it has)."""

    def deadline(self) -> float | None:
        """When :meth:`handle_timer` must be called next (same clock as ``now``)."""

    # ---- DATAGRAM frames
    @property
    def max_datagram_payload(self) -> int:
        """The largest DATAGRAM frame payload that fits one packet on this path now
        (0 if the peer does not accept DATAGRAM frames)."""

    @property
    def peer_max_datagram_frame_size(self) -> int:
        """The peer's max_datagram_frame_size transport parameter (0: none)."""

    @property
    def datagrams_queued(self) -> int:
        """DATAGRAM frames accepted by :meth:`send_datagram` and not sent yet."""

    def send_datagram(self, payload: bytes, now: float | None = None, flow: int = 0) -> SendStatus:
        """Queue one DATAGRAM frame: TOO_BIG past :attr:`max_datagram_payload`, QUEUE_FULL
        past the configured queue (fifo), CLOSED once closing. Frames leave only while the
        congestion window allows. ``flow`` is the frame's flow for fq-codel (see
        :func:`zgate_proto.fq.flow_hash`); ``now`` (the clock of :meth:`flush`) lets CoDel
        judge how long it waited (None: never judged)."""

    # ---- streams
    def next_stream_id(self, unidirectional: bool = False) -> int:
        """The ID of the next stream we may open."""

    def send_stream(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Queue bytes on a stream (opening it if new)."""

    def stream_backlog(self, stream_id: int) -> int:
        """Bytes queued on a stream of ours and not sent yet (0 for an unknown stream)."""

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        """Abruptly end our sending side (RESET_STREAM)."""

    def stop_stream(self, stream_id: int, error_code: int) -> None:
        """Ask the peer to stop sending (STOP_SENDING)."""

    # ---- connection
    def ping(self) -> None:
        """Send a PING (keeps the path alive, proves the peer is there)."""

    @property
    def handshake_done(self) -> bool:
        """Our side of the handshake has completed."""

    @property
    def closed(self) -> bool:
        """Closing has started (either side)."""

    @property
    def peer_chain(self) -> tuple[bytes, ...]:
        """The peer's certificate chain as DER, leaf first (empty before the handshake)."""

    @property
    def peer_identity(self) -> Identity | None:
        """Server side: the verified client identity, once the handshake completed."""

    @property
    def refusal(self) -> tuple[str, str] | None:
        """Server side: (reason, detail) if the handshake was refused."""

    def stats(self) -> ConnStats:
        """Path state for metrics."""

    def close(self, error_code: int = 0, reason: str = "") -> None:
        """Start closing (CONNECTION_CLOSE); a :class:`ConnectionTerminated` follows."""


class QuicEngine(Protocol):
    """Makes connections: one module per engine implements it."""

    name: str
    version: str

    def connect(self, config: ClientConfig, addr: Address, now: float) -> QuicConn:
        """A client connection to ``addr``, its handshake started (flush to send it).
        Raises OSError/ValueError if the certificate files cannot be loaded."""

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
        """A server connection for a client's first Initial datagram (already checked to
        be a QUIC v1 Initial of at least 1200 bytes) and fed with it; None if the engine
        cannot make a connection out of it.

        After a Retry (RFC 9000 §8.1.2) the caller has validated the Initial's token and
        passes the client's original destination CID and the Retry's source CID: the
        server echoes both in its transport parameters (RFC 9000 §7.3)."""

    def reset_tokens_settable(self) -> bool:
        """Whether every connection ID this engine issues carries
        :attr:`ServerConfig.reset_token`'s token (else only the first one does)."""

    def server_context(self, config: ServerConfig) -> object:
        """Load the relay's certificate once (raises zgate_pki.PkiError when the files are
        unusable); adapters may cache it for :meth:`accept`."""


def require_version(engine: str, installed: str, supported: str) -> None:
    """Refuse to run an adapter against an engine release it was not written for."""
    if installed != supported:
        raise ImportError(
            f"zgate's {engine} adapter reaches into private parts of {engine} {supported}, "
            f"but {engine} {installed} is installed: pin {engine}=={supported} or re-check "
            f"the adapter against the new release"
        )


def chain_der(chain: Sequence[Any]) -> tuple[bytes, ...]:
    """DER bytes of certificates given as cryptography x509 objects (or DER already)."""
    out: list[bytes] = []
    for cert in chain:
        if isinstance(cert, bytes):
            out.append(cert)
        else:
            from cryptography.hazmat.primitives.serialization import Encoding

            out.append(cert.public_bytes(Encoding.DER))
    return tuple(out)
