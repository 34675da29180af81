"""The wire (zgate_testkit.wire) delivers by address, loses what it is told to, and moves its
clock only to fire timers (or by its tick)."""

from __future__ import annotations

import pytest

from zgate_proto.engines.base import Address
from zgate_testkit.wire import START, Wire

A: Address = ("192.0.2.1", 1)
B: Address = ("192.0.2.2", 2)


class Echo:
    """Sends ``queued`` to ``peer`` and answers every datagram with ``b"re:" + it``; wants
    its timer at each instant in ``timers``, and records when it fired."""

    def __init__(self, peer: Address, queued: list[bytes] | None = None) -> None:
        self.peer = peer
        self.out = list(queued or [])
        self.received: list[tuple[bytes, Address, float]] = []
        self.timers: list[float] = []
        self.fired: list[float] = []

    def datagram_received(self, data: bytes, addr: Address, now: float) -> None:
        self.received.append((data, addr, now))
        if not data.startswith(b"re:"):
            self.out.append(b"re:" + data)

    def flush(self, now: float) -> list[tuple[bytes, Address]]:
        out, self.out = self.out, []
        return [(data, self.peer) for data in out]

    def deadline(self) -> float | None:
        return min(self.timers, default=None)

    def handle_timer(self, now: float) -> None:
        self.fired.append(now)
        self.timers = [t for t in self.timers if t > now]
        self.out.append(b"tick")


def pair(*queued: bytes) -> tuple[Wire, Echo, Echo]:
    wire = Wire()
    a, b = Echo(B, list(queued)), Echo(A)
    wire.add(A, a)
    wire.add(B, b)
    return wire, a, b


def test_datagrams_reach_the_node_at_their_address_and_are_kept() -> None:
    wire, a, b = pair(b"one", b"two")
    wire.settle()
    assert b.received == [(b"one", A, START), (b"two", A, START)]
    assert [d for d, _, _ in a.received] == [b"re:one", b"re:two"]
    assert wire.sent == {A: [b"one", b"two"], B: [b"re:one", b"re:two"]}
    assert wire.lost == []


def test_a_cut_address_and_a_loss_rule_lose_datagrams() -> None:
    wire, a, b = pair(b"1", b"2", b"3")
    wire.lose = lambda source, seq, data: source == A and seq == 2
    wire.settle()
    assert [d for d, _, _ in b.received] == [b"1", b"3"]
    assert wire.lost == [b"2"]
    wire.cut.add(A)
    b.out.append(b"unheard")
    wire.settle()
    assert b"unheard" in wire.lost and all(d != b"unheard" for d, _, _ in a.received)
    wire.remove(B)
    a.out.append(b"to nobody")
    wire.settle()
    assert wire.lost[-1] == b"to nobody"


def test_timers_fire_within_the_horizon_and_advance_passes_them_all() -> None:
    wire, a, b = pair()
    a.timers = [START + 0.1, START + 3.0]
    assert not wire.fire_timers(horizon=0.05)
    assert wire.now == START
    wire.settle()
    assert a.fired == [START + 0.1] and wire.now == START + 0.1
    assert [d for d, _, _ in b.received] == [b"tick"]  # what the timer sent was delivered
    wire.advance(5.0)
    assert a.fired == [START + 0.1, START + 3.0]
    assert wire.now == pytest.approx(START + 5.1)


def test_a_tick_moves_the_clock_each_exchange() -> None:
    wire, _, b = pair(b"x")
    wire.tick = 0.5
    wire.exchange()
    assert b.received == [(b"x", A, START + 0.5)]


def test_settle_says_what_was_never_reached() -> None:
    wire, _, _ = pair(b"x")
    with pytest.raises(AssertionError, match="not reached"):
        wire.settle(lambda: False)
