"""Queue disciplines for packets that wait (sans-IO): bounded FIFO, and fair queueing with
CoDel on each flow (the shape of RFC 8290's FQ-CoDel, written for zgate).

Where packets wait in zgate — a connection's DATAGRAM frames waiting for the congestion
window, datagrams read from the relay's UDP socket or egress device waiting for the CPU — one
FIFO makes every packet wait behind the fattest sender: a bulk flow or a flood sets the delay
of a ping that shares the queue. :class:`FqCodelQueue` gives each flow (a hash of the packet's
addresses, protocol and ports, or of a datagram's source) its own sub-queue, serves them by
deficit round robin with priority for flows that just became active (a ping, a DNS query, a
TCP handshake go first), and runs CoDel (RFC 8289) on each sub-queue: a flow whose packets
have waited longer than ``target`` for a whole ``interval`` loses packets at the head, at a
rate that grows while its queue stands, so its sender slows down; a burst that drains within
an interval loses nothing. Past the total limit the fattest flow loses its oldest packet, not
the one arriving.

Time is given by the caller (``now`` on every call, one clock); nothing here reads a clock.
An item queued without a time (``now=None``) is never judged by CoDel (its sojourn is unknown,
and a stale guess would be worse than none).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Final, Generic, Literal, TypeVar

__all__ = [
    "DEFAULT_AQM",
    "DISCIPLINES",
    "AqmConfig",
    "FifoQueue",
    "FqCodelQueue",
    "PacketQueue",
    "flow_hash",
    "make_queue",
]

T = TypeVar("T")

#: The --queue names: "fq-codel" (the default) and "fifo" (one tail-dropping queue, as before).
DISCIPLINES: Final = ("fq-codel", "fifo")
Discipline = Literal["fq-codel", "fifo"]


@dataclass(frozen=True, slots=True)
class AqmConfig:
    """FQ-CoDel's knobs (seconds and bytes)."""

    #: Standing delay CoDel tolerates per flow (RFC 8289 suggests 5 ms for the internet; a
    #: relay's own queue should stand far shorter than a path's).
    target: float = 0.005
    #: How long the delay must stay above ``target`` before CoDel drops (about a worst-case
    #: round trip of the flows it serves).
    interval: float = 0.1
    #: Bytes a flow may send per round before the next flow's turn.
    quantum: int = 1514

    def __post_init__(self) -> None:
        if not (self.target > 0 and self.interval > 0 and self.quantum > 0):
            raise ValueError("AQM target, interval and quantum must be positive")


#: The defaults (5 ms target, 100 ms interval).
DEFAULT_AQM: Final = AqmConfig()


class PacketQueue(Generic[T]):
    """What both disciplines offer: put items in with their size and flow, take them out."""

    limit: int
    #: Items dropped, by reason: "overflow" (past the limit), "aqm" (CoDel).
    drops: dict[str, int]

    def push(self, item: T, size: int, flow: int, now: float | None) -> bool:
        """Queue ``item``; False if it was refused (a full FIFO). Another flow's item may be
        dropped instead (counted in :attr:`drops`)."""
        raise NotImplementedError

    def pop(self, now: float) -> T | None:
        """The next item to send (None: empty). CoDel may drop items on the way (counted)."""
        raise NotImplementedError

    def unpop(self, item: T, size: int) -> None:
        """Put the item :meth:`pop` just gave back at the head (it did not fit after all)."""
        raise NotImplementedError

    def clear(self) -> None:
        """Forget every queued item."""
        raise NotImplementedError

    def flows(self) -> int:
        """Flows with something queued now."""
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError


class FifoQueue(PacketQueue[T]):
    """One bounded FIFO: past ``limit`` items the arriving one is refused (tail drop; the
    caller counts the refusal, so :attr:`drops` stays at zero)."""

    __slots__ = ("_items", "drops", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: deque[T] = deque()
        self.drops = {"overflow": 0, "aqm": 0}

    def push(self, item: T, size: int, flow: int, now: float | None) -> bool:
        if len(self._items) >= self.limit:
            return False
        self._items.append(item)
        return True

    def pop(self, now: float) -> T | None:
        return self._items.popleft() if self._items else None

    def unpop(self, item: T, size: int) -> None:
        self._items.appendleft(item)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def flows(self) -> int:
        """One flow while anything is queued (a FIFO tells none apart)."""
        return 1 if self._items else 0


class _Flow(Generic[T]):
    """One flow's sub-queue and its CoDel state."""

    __slots__ = (
        "bytes",
        "count",
        "deficit",
        "drop_next",
        "dropping",
        "first_above",
        "items",
        "key",
        "last_count",
        "listed",
    )

    def __init__(self, key: int, quantum: int) -> None:
        self.key = key
        self.items: deque[tuple[T, int, float | None]] = deque()
        self.bytes = 0
        self.deficit = quantum
        self.listed = False  # in the new or the old list
        # CoDel (RFC 8289 section 5): when the sojourn first went above target (0: it
        # is not), whether we are in the dropping state, when the next drop is due, and
        # how many drops this dropping state made (and the one before it).
        self.first_above = 0.0
        self.dropping = False
        self.drop_next = 0.0
        self.count = 0
        self.last_count = 0


class FqCodelQueue(PacketQueue[T]):
    """Per-flow sub-queues, deficit round robin with new-flow priority, CoDel on each."""

    __slots__ = (
        "_flows",
        "_interval",
        "_last",
        "_new",
        "_old",
        "_quantum",
        "_target",
        "_total",
        "drops",
        "limit",
    )

    def __init__(self, limit: int, config: AqmConfig | None = None) -> None:
        config = config or AqmConfig()
        self.limit = limit
        self._target = config.target
        self._interval = config.interval
        self._quantum = config.quantum
        self._flows: dict[int, _Flow[T]] = {}
        self._new: deque[_Flow[T]] = deque()
        self._old: deque[_Flow[T]] = deque()
        self._total = 0
        self._last: _Flow[T] | None = None
        self.drops = {"overflow": 0, "aqm": 0}

    def __len__(self) -> int:
        return self._total

    def flows(self) -> int:
        """Flows with a sub-queue now (for tests and metrics)."""
        return len(self._flows)

    def push(self, item: T, size: int, flow: int, now: float | None) -> bool:
        sub = self._flows.get(flow)
        if sub is None:
            sub = self._flows[flow] = _Flow(flow, self._quantum)
        sub.items.append((item, size, now))
        sub.bytes += size
        self._total += 1
        if not sub.listed:
            sub.listed = True
            sub.deficit = self._quantum
            self._new.append(sub)
        if self._total > self.limit:
            self._drop_from_fattest()
        return True

    def _drop_from_fattest(self) -> None:
        fattest = max(self._flows.values(), key=lambda f: f.bytes)
        _item, size, _at = fattest.items.popleft()
        fattest.bytes -= size
        self._total -= 1
        self.drops["overflow"] += 1

    def pop(self, now: float) -> T | None:
        new, old = self._new, self._old
        while True:
            if new:
                sub, from_new = new[0], True
            elif old:
                sub, from_new = old[0], False
            else:
                return None
            if sub.deficit <= 0:
                sub.deficit += self._quantum
                (new if from_new else old).popleft()
                old.append(sub)
                continue
            items = sub.items
            if items and not sub.dropping:
                # The common case inline (one call per packet less): below target, or too
                # little queued to call it standing; see _take for the rest.
                item, size, at = items[0]
                if at is None or now - at < self._target or sub.bytes - size <= self._quantum:
                    items.popleft()
                    sub.bytes -= size
                    self._total -= 1
                    sub.first_above = 0.0
                    sub.deficit -= size
                    self._last = sub
                    return item
            got = self._codel_pop(sub, now)
            if got is None:
                (new if from_new else old).popleft()
                if from_new and old:
                    old.append(sub)  # RFC 8290 4.2: no instant return to the new list
                else:
                    sub.listed = False
                    del self._flows[sub.key]
                continue
            item, size = got
            sub.deficit -= size
            self._last = sub
            return item

    def unpop(self, item: T, size: int) -> None:
        sub = self._last
        if sub is None:
            raise RuntimeError("unpop() without a pop()")
        sub.items.appendleft((item, size, None))
        sub.bytes += size
        sub.deficit += size
        self._total += 1
        if sub.key not in self._flows:
            self._flows[sub.key] = sub
        if not sub.listed:
            sub.listed = True
            self._new.appendleft(sub)
        self._last = None

    def clear(self) -> None:
        self._flows.clear()
        self._new.clear()
        self._old.clear()
        self._total = 0
        self._last = None

    # ------------------------------------------------------------------------ CoDel

    def _take(self, sub: _Flow[T], now: float) -> tuple[T, int, bool] | None:
        """The head item of ``sub``, its size, and whether CoDel may drop it."""
        if not sub.items:
            sub.first_above = 0.0
            return None
        item, size, at = sub.items.popleft()
        sub.bytes -= size
        self._total -= 1
        if at is None or now - at < self._target or sub.bytes <= self._quantum:
            # Below target, or too little left to call it a standing queue.
            sub.first_above = 0.0
            return item, size, False
        if sub.first_above == 0.0:
            sub.first_above = now + self._interval
            return item, size, False
        return item, size, now >= sub.first_above

    def _next_drop(self, at: float, count: int) -> float:
        return at + self._interval / math.sqrt(count)

    def _codel_pop(self, sub: _Flow[T], now: float) -> tuple[T, int] | None:
        taken = self._take(sub, now)
        if taken is None:
            sub.dropping = False
            return None
        item, size, droppable = taken
        if sub.dropping:
            if not droppable:
                sub.dropping = False
                return item, size
            while now >= sub.drop_next and sub.dropping:
                self.drops["aqm"] += 1  # drop the head, judge the next one
                sub.count += 1
                taken = self._take(sub, now)
                if taken is None:
                    sub.dropping = False
                    return None
                item, size, droppable = taken
                if not droppable:
                    sub.dropping = False
                else:
                    sub.drop_next = self._next_drop(sub.drop_next, sub.count)
            return item, size
        if droppable:
            self.drops["aqm"] += 1
            taken = self._take(sub, now)
            sub.dropping = True
            # Re-entering soon after the last dropping state: resume near its drop rate.
            recent = now - sub.drop_next < 16 * self._interval
            delta = sub.count - sub.last_count
            sub.count = delta if recent and delta > 1 else 1
            sub.last_count = sub.count
            sub.drop_next = self._next_drop(now, sub.count)
            if taken is None:
                return None
            item, size, _ = taken
        return item, size


def make_queue(
    discipline: Discipline | str, limit: int, config: AqmConfig | None = None
) -> PacketQueue[T]:
    """The queue a --queue name stands for."""
    if discipline == "fifo":
        return FifoQueue(limit)
    if discipline == "fq-codel":
        return FqCodelQueue(limit, config)
    raise ValueError(f"unknown queue discipline {discipline!r}: choose one of {DISCIPLINES}")


def flow_hash(packet: bytes, offset: int = 0) -> int:
    """A cheap flow key for the IP packet at ``packet[offset:]``: addresses, protocol and,
    for unfragmented TCP/UDP, ports. Anything unparsable hashes to one shared flow (0)."""
    try:
        version = packet[offset] >> 4
        if version == 4:
            ihl = (packet[offset] & 0x0F) * 4
            proto = packet[offset + 9]
            addresses = packet[offset + 12 : offset + 20]
            # Ports only in the first fragment (offset 0, no more-fragments bit).
            if proto in (6, 17) and not (packet[offset + 6] & 0x3F or packet[offset + 7]):
                return hash((proto, addresses, packet[offset + ihl : offset + ihl + 4]))
            return hash((proto, addresses))
        if version == 6:
            proto = packet[offset + 6]
            addresses = packet[offset + 8 : offset + 40]
            if proto in (6, 17):
                return hash((proto, addresses, packet[offset + 40 : offset + 44]))
            return hash((proto, addresses))
    except IndexError:
        pass
    return 0
