"""The queue disciplines (zgate_proto.fq) with an injected clock: fairness between flows,
CoDel against a standing queue but not a burst, the total limit, the flow hash."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zgate_proto.fq import AqmConfig, FifoQueue, FqCodelQueue, flow_hash, make_queue

FAT, THIN = 1, 2
SIZE = 1200


def test_fifo_refuses_past_its_limit_and_keeps_order() -> None:
    q: FifoQueue[int] = FifoQueue(3)
    assert [q.push(i, SIZE, 0, 0.0) for i in range(4)] == [True, True, True, False]
    assert q.drops["overflow"] == 0  # refused, not dropped: the caller counts it
    assert q.flows() == 1
    assert [q.pop(0.0) for _ in range(4)] == [0, 1, 2, None]


def test_a_new_flow_overtakes_a_backlogged_one() -> None:
    q: FqCodelQueue[str] = FqCodelQueue(1000)
    for i in range(100):
        q.push(f"fat{i}", SIZE, FAT, 0.0)
    assert q.pop(0.0) == "fat0"
    q.push("ping", 84, THIN, 0.0)
    # The ping waits for at most the fat flow's current quantum, not its 99 packets.
    out = [q.pop(0.0) for _ in range(3)]
    assert "ping" in out


def test_two_backlogged_flows_share_bytes_equally() -> None:
    q: FqCodelQueue[int] = FqCodelQueue(10_000)
    for _ in range(1000):
        q.push(FAT, 1500, FAT, 0.0)  # big packets
    for _ in range(3000):
        q.push(THIN, 500, THIN, 0.0)  # three times as many small ones
    sent = {FAT: 0, THIN: 0}
    for _ in range(1000):
        flow = q.pop(0.0)
        assert flow is not None
        sent[flow] += 1500 if flow == FAT else 500
    assert 0.8 < sent[FAT] / sent[THIN] < 1.25


def test_fifo_gives_no_such_fairness() -> None:
    # The same arrivals through one FIFO: the thin flow waits behind the whole fat backlog.
    q: FifoQueue[int] = FifoQueue(10_000)
    for _ in range(100):
        q.push(FAT, SIZE, FAT, 0.0)
    q.push(THIN, 84, THIN, 0.0)
    assert [q.pop(0.0) for _ in range(101)].index(THIN) == 100


def test_codel_drops_a_standing_queue() -> None:
    config = AqmConfig(target=0.005, interval=0.1)
    q: FqCodelQueue[int] = FqCodelQueue(10_000, config)
    # Arrivals at twice the service rate for 1 s: the queue (and its delay) stands and grows.
    now, seq = 0.0, 0
    delivered = 0
    while now < 1.0:
        for _ in range(2):
            q.push(seq, SIZE, FAT, now)
            seq += 1
        if q.pop(now) is not None:
            delivered += 1
        now += 0.001
    assert q.drops["aqm"] > 0
    assert q.drops["overflow"] == 0


def test_codel_keeps_the_delay_near_target_for_a_responsive_sender() -> None:
    # A sender that halves its rate when it loses a packet (as TCP and QUIC do): the queue's
    # delay settles near target instead of growing without bound.
    config = AqmConfig(target=0.005, interval=0.05)
    q: FqCodelQueue[float] = FqCodelQueue(100_000, config)
    rate, now, sojourns = 3.0, 0.0, []
    carry = 0.0
    while now < 3.0:
        carry += rate
        while carry >= 1:
            q.push(now, SIZE, FAT, now)
            carry -= 1
        before = q.drops["aqm"]
        item = q.pop(now)
        if q.drops["aqm"] > before:
            rate = max(0.5, rate / 2)
        else:
            rate += 0.01
        if item is not None and now > 2.0:
            sojourns.append(now - item)
        now += 0.001
    assert q.drops["aqm"] > 0
    assert sorted(sojourns)[len(sojourns) // 2] < 0.03  # median well under a standing second


def test_codel_leaves_a_burst_alone() -> None:
    q: FqCodelQueue[int] = FqCodelQueue(10_000, AqmConfig(target=0.005, interval=0.1))
    for i in range(50):  # a burst at once, served in 50 ms (< interval)
        q.push(i, SIZE, FAT, 0.0)
    out = [q.pop(0.001 * (i + 1)) for i in range(50)]
    assert out == list(range(50))
    assert q.drops["aqm"] == 0


def test_items_without_a_time_are_not_judged() -> None:
    q: FqCodelQueue[int] = FqCodelQueue(10_000, AqmConfig(target=0.001, interval=0.01))
    for i in range(500):
        q.push(i, SIZE, FAT, None)
    assert [q.pop(10.0 + i) for i in range(500)] == list(range(500))
    assert q.drops["aqm"] == 0


def test_the_limit_drops_from_the_fattest_flow() -> None:
    q: FqCodelQueue[str] = FqCodelQueue(10)
    for i in range(10):
        q.push(f"fat{i}", SIZE, FAT, 0.0)
    assert q.push("thin", 84, THIN, 0.0)  # accepted: the fat flow pays
    assert len(q) == 10
    assert q.drops["overflow"] == 1
    out = [q.pop(0.0) for _ in range(10)]
    assert "thin" in out and "fat0" not in out


def test_unpop_puts_the_item_back_at_the_head() -> None:
    q: FqCodelQueue[int] = FqCodelQueue(100)
    for i in range(3):
        q.push(i, SIZE, FAT, 0.0)
    item = q.pop(0.0)
    assert item == 0
    q.unpop(item, SIZE)
    assert len(q) == 3
    assert [q.pop(0.0) for _ in range(4)] == [0, 1, 2, None]
    assert q.flows() == 0


def test_clear_empties() -> None:
    q: FqCodelQueue[int] = FqCodelQueue(100)
    q.push(1, SIZE, FAT, 0.0)
    q.clear()
    assert len(q) == 0 and q.pop(0.0) is None


def test_make_queue_names() -> None:
    assert isinstance(make_queue("fifo", 4), FifoQueue)
    assert isinstance(make_queue("fq-codel", 4), FqCodelQueue)
    with pytest.raises(ValueError, match="unknown queue discipline"):
        make_queue("red", 4)
    with pytest.raises(ValueError, match="positive"):
        AqmConfig(target=0)


def _udp4(src: str, sport: int, dport: int, frag: int = 0) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        28,
        0,
        frag,
        64,
        17,
        0,
        bytes(map(int, src.split("."))),
        bytes([203, 0, 113, 10]),
    )
    return header + struct.pack("!HHHH", sport, dport, 8, 0)


def test_flow_hash_separates_ports_and_addresses() -> None:
    a = flow_hash(_udp4("10.100.0.2", 5000, 53))
    assert a == flow_hash(_udp4("10.100.0.2", 5000, 53))
    assert a != flow_hash(_udp4("10.100.0.2", 5001, 53))
    assert a != flow_hash(_udp4("10.100.0.3", 5000, 53))
    # A later fragment carries no ports: it hashes by addresses and protocol only.
    assert flow_hash(_udp4("10.100.0.2", 1, 2, frag=10)) == flow_hash(
        _udp4("10.100.0.2", 3, 4, frag=20)
    )
    prefix = b"\x00\x04"
    assert flow_hash(prefix + _udp4("10.100.0.2", 5000, 53), 2) == a


@given(st.binary(max_size=80), st.integers(min_value=0, max_value=4))
def test_flow_hash_never_raises(data: bytes, offset: int) -> None:
    assert isinstance(flow_hash(data, offset), int)


@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.integers(40, 1500), st.booleans()),
        max_size=300,
    )
)
def test_fq_never_loses_count(ops: list[tuple[int, int, bool]]) -> None:
    q: FqCodelQueue[int] = FqCodelQueue(50, AqmConfig(target=0.001, interval=0.005))
    now, pushed, popped = 0.0, 0, 0
    for flow, size, do_pop in ops:
        now += 0.002
        if do_pop:
            popped += q.pop(now) is not None
        else:
            q.push(flow, size, flow, now)
            pushed += 1
        assert len(q) <= 50
    while q.pop(now) is not None:
        popped += 1
    assert pushed == popped + q.drops["aqm"] + q.drops["overflow"]
    assert q.flows() == 0
