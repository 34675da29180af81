"""In-memory QUIC connections: :class:`MemoryQuicConn`, a fake
:class:`~zgate_proto.engines.base.QuicConn` with no crypto and no packets, and
:class:`MemoryLink`, which joins two of them.

The fake keeps streams (in order, optionally cut into small pieces to exercise the
incremental parsers), DATAGRAM frames (with a loss switch and a bounded queue) and the
stream-state rules a real engine enforces (no data after FIN or RESET_STREAM, STOP_SENDING
answered with RESET_STREAM as aioquic does), so a misuse fails loudly. What it sent waits in
``outbox`` as frames (:class:`StreamFrame`, ...) that a test may inspect or reorder.

:class:`Link` is what the HTTP/3 and session tests move bytes with: a :class:`MemoryLink`, or
an :class:`~zgate_testkit.wire.EnginePair` of real engine connections.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from zgate_pki import Identity
from zgate_proto.engines.base import (
    Address,
    ConnectionTerminated,
    ConnStats,
    DatagramReceived,
    QuicConn,
    QuicEvent,
    SendStatus,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)

__all__ = [
    "MEMORY_ADDR",
    "CloseFrame",
    "DatagramFrame",
    "Frame",
    "Link",
    "MemoryLink",
    "MemoryQuicConn",
    "ResetFrame",
    "StopFrame",
    "StreamFrame",
    "drain",
    "memory_pair",
]

MEMORY_ADDR: Address = ("memory", 0)


# ---- the fake connection -------------------------------------------------------------------


@dataclass(frozen=True)
class StreamFrame:
    stream_id: int
    data: bytes
    fin: bool


@dataclass(frozen=True)
class ResetFrame:
    stream_id: int
    code: int


@dataclass(frozen=True)
class StopFrame:
    stream_id: int
    code: int


@dataclass(frozen=True)
class DatagramFrame:
    data: bytes


@dataclass(frozen=True)
class CloseFrame:
    code: int
    reason: str


Frame = StreamFrame | ResetFrame | StopFrame | DatagramFrame | CloseFrame


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
        self.outbox: list[Frame] = []
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
        return sum(isinstance(f, DatagramFrame) for f in self.outbox)

    def send_datagram(self, payload: bytes, now: float | None = None, flow: int = 0) -> SendStatus:
        if self._closed:
            return SendStatus.CLOSED
        if len(payload) > self.max_datagram_payload:
            return SendStatus.TOO_BIG
        if self.datagrams_queued >= self._queue_limit:
            return SendStatus.QUEUE_FULL
        self.outbox.append(DatagramFrame(bytes(payload)))
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
            self.outbox.append(StreamFrame(stream_id, bytes(data), end_stream))

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
        self.outbox.append(ResetFrame(stream_id, error_code))

    def stop_stream(self, stream_id: int, error_code: int) -> None:
        self.stop_calls.append((stream_id, error_code))
        self.outbox.append(StopFrame(stream_id, error_code))

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
        self.outbox.append(CloseFrame(error_code, reason))
        self.events.append(ConnectionTerminated(error_code, reason, False, True))

    # ---- the link
    def take(self) -> list[Frame]:
        """What to deliver to the peer now (stream data stays while ``hold_streams``)."""
        out: list[Frame]
        if self.hold_streams:
            out = [f for f in self.outbox if not isinstance(f, StreamFrame)]
            self.outbox = [f for f in self.outbox if isinstance(f, StreamFrame)]
        else:
            out, self.outbox = self.outbox, []
            self._backlog.clear()
        return out

    def arrive(self, frame: Frame, chunk: int | None) -> None:
        """One frame from the peer becomes our events."""
        if self._terminated:
            return
        if isinstance(frame, StreamFrame):
            data = frame.data
            if chunk and len(data) > chunk:
                pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)]
                for piece in pieces[:-1]:
                    self.events.append(StreamDataReceived(frame.stream_id, piece, False))
                data = pieces[-1]
            self.events.append(StreamDataReceived(frame.stream_id, data, frame.fin))
        elif isinstance(frame, ResetFrame):
            self.events.append(StreamReset(frame.stream_id, frame.code))
        elif isinstance(frame, StopFrame):
            self.reset_stream(frame.stream_id, frame.code)  # what aioquic does itself
            self.events.append(StopSendingReceived(frame.stream_id, frame.code))
        elif isinstance(frame, DatagramFrame):
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

    @property
    def client(self) -> QuicConn: ...

    @property
    def server(self) -> QuicConn | None:
        """None until the client's first datagram made the server's connection."""

    def exchange(self) -> bool:
        """Move what each side has to send once; True if anything moved."""

    def fire_timers(self) -> bool:
        """Fire the next timer due soon (a fake clock); True if one fired."""

    def lose_datagrams(self, lose: bool) -> None:
        """DATAGRAM frames are lost (both ways) while set."""


class MemoryLink:
    """Two :class:`MemoryQuicConn` joined directly."""

    def __init__(self, client: MemoryQuicConn, server: MemoryQuicConn) -> None:
        self.mem_client = client
        self.mem_server = server

    @property
    def client(self) -> QuicConn:
        return self.mem_client

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

    def fire_timers(self) -> bool:
        return False  # a memory connection has no timers

    def lose_datagrams(self, lose: bool) -> None:
        self.mem_client.lose_datagrams = self.mem_server.lose_datagrams = lose


def drain(conn: QuicConn | None, sink: Callable[[QuicEvent], None]) -> None:
    """Hand every pending event of ``conn`` to ``sink``."""
    if conn is None:
        return
    while (event := conn.next_event()) is not None:
        sink(event)
