"""In-memory QUIC links for the HTTP/3 and session tests, and the tests of the fake itself.

:class:`MemoryQuicConn` is a fake :class:`~zgate_proto.engines.base.QuicConn`: no crypto,
no packets, just streams (in order, optionally cut into small pieces to exercise the
incremental parsers), DATAGRAM frames (with a loss switch and a bounded queue) and the
stream-state rules a real engine enforces (no data after FIN or RESET_STREAM, STOP_SENDING
answered with RESET_STREAM as aioquic does), so a misuse fails loudly.

:class:`EngineLink` joins a client and a server connection of a real engine (aioquic, qh3)
in memory with a fake clock, the way the engine conformance suite does.

Other test modules import this one by name (see ``sys.path`` there): pytest's importlib
mode puts no test directory on the path.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest

from zgate_pki import ChainVerifier, Identity, PkiPaths, init_pki, issue_certificate
from zgate_proto.engines import get_engine
from zgate_proto.engines.base import (
    Address,
    ClientConfig,
    ConnectionTerminated,
    ConnStats,
    DatagramReceived,
    QuicConn,
    QuicEngine,
    QuicEvent,
    SendStatus,
    ServerConfig,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)

MEMORY_ADDR: Address = ("memory", 0)
CLIENT_ADDR: Address = ("198.51.100.7", 40000)
SERVER_ADDR: Address = ("203.0.113.1", 443)


# ---- the fake connection -------------------------------------------------------------------


@dataclass(frozen=True)
class _Stream:
    stream_id: int
    data: bytes
    fin: bool


@dataclass(frozen=True)
class _Reset:
    stream_id: int
    code: int


@dataclass(frozen=True)
class _Stop:
    stream_id: int
    code: int


@dataclass(frozen=True)
class _Datagram:
    data: bytes


@dataclass(frozen=True)
class _Close:
    code: int
    reason: str


_Frame = _Stream | _Reset | _Stop | _Datagram | _Close


class MemoryQuicConn:
    """One side of an in-memory QUIC connection (see the module docstring)."""

    def __init__(
        self,
        is_client: bool,
        *,
        max_datagram_payload: int = 1200,
        peer_max_datagram_frame_size: int = 65536,
        datagram_queue: int = 64,
    ) -> None:
        self.is_client = is_client
        self.peer_address: Address = MEMORY_ADDR
        self.outbox: list[_Frame] = []
        self.events: deque[QuicEvent] = deque()
        self._max_payload = max_datagram_payload
        self._peer_max_frame = peer_max_datagram_frame_size
        self._queue_limit = datagram_queue
        self._next = {False: 0 if is_client else 1, True: 2 if is_client else 3}
        self._opened: set[int] = set()
        self._finished: set[int] = set()  # our sending side ended with FIN
        self._reset: set[int] = set()  # our sending side reset
        self._backlog: dict[int, int] = {}
        self._closed = False
        self._terminated = False
        #: Cut stream data into pieces of at most this many bytes on delivery.
        self.chunk: int | None = None
        #: DATAGRAM frames are lost while set.
        self.lose_datagrams = False
        #: Stream data stays queued (counted by stream_backlog) while set.
        self.hold_streams = False
        self.stop_calls: list[tuple[int, int]] = []
        self.reset_calls: list[tuple[int, int]] = []

    # ---- input (nothing to parse: frames arrive as events through deliver())
    def feed(self, data: bytes, addr: Address, now: float) -> None:
        raise AssertionError("a memory connection is fed by deliver()")

    def handle_timer(self, now: float) -> None:
        pass

    def next_event(self) -> QuicEvent | None:
        return self.events.popleft() if self.events else None

    def flush(self, now: float) -> list[tuple[bytes, Address]]:
        return []

    def deadline(self) -> float | None:
        return None

    # ---- DATAGRAM frames
    @property
    def max_datagram_payload(self) -> int:
        return self._max_payload if self._peer_max_frame else 0

    @property
    def peer_max_datagram_frame_size(self) -> int:
        return self._peer_max_frame

    @property
    def datagrams_queued(self) -> int:
        return sum(isinstance(f, _Datagram) for f in self.outbox)

    def send_datagram(self, payload: bytes) -> SendStatus:
        if self._closed:
            return SendStatus.CLOSED
        if len(payload) > self.max_datagram_payload:
            return SendStatus.TOO_BIG
        if self.datagrams_queued >= self._queue_limit:
            return SendStatus.QUEUE_FULL
        self.outbox.append(_Datagram(bytes(payload)))
        return SendStatus.SENT

    # ---- streams
    def next_stream_id(self, unidirectional: bool = False) -> int:
        return self._next[unidirectional]

    def _mine(self, stream_id: int) -> bool:
        return (stream_id & 1) == (0 if self.is_client else 1)

    def send_stream(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        if stream_id & 2 and not self._mine(stream_id):
            raise ValueError(f"cannot send on the peer's unidirectional stream {stream_id}")
        if stream_id in self._finished:
            raise RuntimeError(f"data after FIN on stream {stream_id}")
        if stream_id in self._reset:
            raise RuntimeError(f"data after RESET_STREAM on stream {stream_id}")
        if self._mine(stream_id) and stream_id not in self._opened:
            kind = bool(stream_id & 2)
            assert stream_id == self._next[kind], "streams open in order"
            self._opened.add(stream_id)
            self._next[kind] += 4
        if end_stream:
            self._finished.add(stream_id)
        self._backlog[stream_id] = self._backlog.get(stream_id, 0) + len(data)
        if not self._closed:
            self.outbox.append(_Stream(stream_id, bytes(data), end_stream))

    def stream_backlog(self, stream_id: int) -> int:
        return self._backlog.get(stream_id, 0)

    def stream_finished(self, stream_id: int) -> bool:
        """Test helper: our sending side of the stream ended with FIN."""
        return stream_id in self._finished

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        self.reset_calls.append((stream_id, error_code))
        if stream_id in self._reset or stream_id in self._finished:
            return  # like aioquic: no effect once reset or finished
        self._reset.add(stream_id)
        self.outbox.append(_Reset(stream_id, error_code))

    def stop_stream(self, stream_id: int, error_code: int) -> None:
        self.stop_calls.append((stream_id, error_code))
        self.outbox.append(_Stop(stream_id, error_code))

    # ---- connection
    def ping(self) -> None:
        pass

    @property
    def handshake_done(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def peer_chain(self) -> tuple[bytes, ...]:
        return ()

    @property
    def peer_identity(self) -> Identity | None:
        return None

    @property
    def refusal(self) -> tuple[str, str] | None:
        return None

    def stats(self) -> ConnStats:
        return ConnStats(0.0, 0, 0, 0, self.datagrams_queued)

    def close(self, error_code: int = 0, reason: str = "") -> None:
        if self._closed:
            return
        self._closed = True
        self.outbox.append(_Close(error_code, reason))
        self.events.append(ConnectionTerminated(error_code, reason, False, True))

    # ---- the link
    def take(self) -> list[_Frame]:
        """What to deliver to the peer now (stream data stays while ``hold_streams``)."""
        out: list[_Frame]
        if self.hold_streams:
            out = [f for f in self.outbox if not isinstance(f, _Stream)]
            self.outbox = [f for f in self.outbox if isinstance(f, _Stream)]
        else:
            out, self.outbox = self.outbox, []
            self._backlog.clear()
        return out

    def arrive(self, frame: _Frame, chunk: int | None) -> None:
        """One frame from the peer becomes our events."""
        if self._terminated:
            return
        if isinstance(frame, _Stream):
            data = frame.data
            if chunk and len(data) > chunk:
                pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)]
                for piece in pieces[:-1]:
                    self.events.append(StreamDataReceived(frame.stream_id, piece, False))
                data = pieces[-1]
            self.events.append(StreamDataReceived(frame.stream_id, data, frame.fin))
        elif isinstance(frame, _Reset):
            self.events.append(StreamReset(frame.stream_id, frame.code))
        elif isinstance(frame, _Stop):
            self.reset_stream(frame.stream_id, frame.code)  # what aioquic does itself
            self.events.append(StopSendingReceived(frame.stream_id, frame.code))
        elif isinstance(frame, _Datagram):
            if not self.lose_datagrams:
                self.events.append(DatagramReceived(frame.data))
        else:
            self._closed = self._terminated = True
            self.events.append(ConnectionTerminated(frame.code, frame.reason, True, True))


def memory_pair(
    *, client_datagrams: bool = True, server_datagrams: bool = True, datagram_queue: int = 64
) -> tuple[MemoryQuicConn, MemoryQuicConn]:
    """A client and a server connection; ``*_datagrams=False``: that side does not accept
    DATAGRAM frames (its peer sees max_datagram_frame_size 0)."""
    client = MemoryQuicConn(
        True,
        peer_max_datagram_frame_size=65536 if server_datagrams else 0,
        datagram_queue=datagram_queue,
    )
    server = MemoryQuicConn(
        False,
        peer_max_datagram_frame_size=65536 if client_datagrams else 0,
        datagram_queue=datagram_queue,
    )
    return client, server


# ---- links: how the session tests move bytes -------------------------------------------------


class Link(Protocol):
    """A client and a server QUIC connection joined in memory."""

    client: QuicConn

    @property
    def server(self) -> QuicConn | None: ...

    def exchange(self) -> bool:
        """Move what each side has to send once; True if anything moved."""

    def advance(self) -> bool:
        """Fire the next timer due soon (a fake clock); True if one fired."""

    def lose_datagrams(self, lose: bool) -> None:
        """DATAGRAM frames are lost (both ways) while set."""


class MemoryLink:
    """Two :class:`MemoryQuicConn` joined directly."""

    def __init__(self, client: MemoryQuicConn, server: MemoryQuicConn) -> None:
        self.client: QuicConn = client
        self.mem_client = client
        self.mem_server = server

    @property
    def server(self) -> QuicConn | None:
        return self.mem_server

    def exchange(self) -> bool:
        moved = False
        for src, dst in ((self.mem_client, self.mem_server), (self.mem_server, self.mem_client)):
            for frame in src.take():
                dst.arrive(frame, dst.chunk)
                moved = True
        return moved

    def advance(self) -> bool:
        return False

    def lose_datagrams(self, lose: bool) -> None:
        self.mem_client.lose_datagrams = self.mem_server.lose_datagrams = lose


@dataclass
class EngineLink:
    """A client and a server connection of one real engine, a fake clock, no sockets."""

    engine: QuicEngine
    server_config: ServerConfig
    client: QuicConn
    now: float = 1.0
    conn: QuicConn | None = None
    drop_datagrams: bool = False
    horizon: float = 0.2
    _seen: list[int] = field(default_factory=list)

    @property
    def server(self) -> QuicConn | None:
        return self.conn

    def exchange(self) -> bool:
        out = self.client.flush(self.now)
        for data, addr in out:
            assert addr == SERVER_ADDR
            if self.conn is None:
                self.conn = self.engine.accept(self.server_config, data, CLIENT_ADDR, self.now)
                assert self.conn is not None, "the engine refused the client's Initial"
            else:
                self.conn.feed(data, CLIENT_ADDR, self.now)
        back = self.conn.flush(self.now) if self.conn is not None else []
        for data, _ in back:
            self.client.feed(data, SERVER_ADDR, self.now)
        return bool(out or back)

    def advance(self) -> bool:
        conns = [c for c in (self.client, self.conn) if c is not None]
        deadlines = [d for c in conns if (d := c.deadline()) is not None]
        if not deadlines or min(deadlines) > self.now + self.horizon:
            return False
        self.now = max(self.now, min(deadlines))
        for conn in conns:
            at = conn.deadline()
            if at is not None and at <= self.now:
                conn.handle_timer(self.now)
        return True

    def lose_datagrams(self, lose: bool) -> None:
        raise NotImplementedError("loss is tested over memory links")


def make_pki(directory: Path) -> PkiPaths:
    """A CA, the relay's certificate and client alice's."""
    paths = init_pki(directory)
    issue_certificate(paths.directory, "client", "alice", groups=["eng"])
    return paths


def engine_link(name: str, pki: PkiPaths) -> EngineLink:
    """A fresh client connection of engine ``name`` dialling a server of the same engine.

    Skips when the engine's adapter cannot load.
    """
    try:
        engine = get_engine(name)
    except ImportError as exc:
        pytest.skip(f"engine {name} unavailable: {exc}")
    server = ServerConfig(
        cert_file=pki.relay_cert,
        key_file=pki.relay_key,
        verifier=ChainVerifier(pki.ca_cert, pki.crl),
    )
    client = ClientConfig(
        server_name="localhost",
        ca_file=pki.ca_cert,
        cert_file=pki.leaf_cert("client", "alice"),
        key_file=pki.leaf_key("client", "alice"),
    )
    return EngineLink(engine, server, engine.connect(client, SERVER_ADDR, 1.0))


def drain(conn: QuicConn | None, sink: Callable[[QuicEvent], None]) -> None:
    """Hand every pending event of ``conn`` to ``sink``."""
    if conn is None:
        return
    while (event := conn.next_event()) is not None:
        sink(event)


# ---- tests of the fake ------------------------------------------------------------------------


def test_memory_streams_arrive_in_order_and_in_pieces() -> None:
    client, server = memory_pair()
    link = MemoryLink(client, server)
    server.chunk = 3
    sid = client.next_stream_id()
    client.send_stream(sid, b"abcdefg")
    client.send_stream(sid, b"h", end_stream=True)
    assert client.next_stream_id() == sid + 4
    assert client.stream_backlog(sid) == 8
    link.exchange()
    assert client.stream_backlog(sid) == 0
    got = [(e.data, e.end_stream) for e in server.events if isinstance(e, StreamDataReceived)]
    assert got == [(b"abc", False), (b"def", False), (b"g", False), (b"h", True)]
    with pytest.raises(RuntimeError):
        client.send_stream(sid, b"late")


def test_memory_datagrams_can_be_lost_and_are_bounded() -> None:
    client, server = memory_pair(datagram_queue=2)
    link = MemoryLink(client, server)
    assert client.send_datagram(b"x" * 1201) is SendStatus.TOO_BIG
    assert client.send_datagram(b"1") is SendStatus.SENT
    assert client.send_datagram(b"2") is SendStatus.SENT
    assert client.send_datagram(b"3") is SendStatus.QUEUE_FULL
    link.lose_datagrams(True)
    link.exchange()
    assert not server.events
    link.lose_datagrams(False)
    client.send_datagram(b"4")
    link.exchange()
    assert list(server.events) == [DatagramReceived(b"4")]


def test_memory_stop_sending_resets_the_peers_side_and_close_reaches_the_peer() -> None:
    client, server = memory_pair()
    link = MemoryLink(client, server)
    sid = client.next_stream_id()
    client.send_stream(sid, b"x")
    link.exchange()
    server.stop_stream(sid, 7)
    link.exchange()
    assert list(client.events) == [StopSendingReceived(sid, 7)]
    link.exchange()
    assert StreamReset(sid, 7) in server.events
    client.close(0x100, "bye")
    link.exchange()
    assert server.events[-1] == ConnectionTerminated(0x100, "bye", True, True)
    assert client.events[-1] == ConnectionTerminated(0x100, "bye", False, True)
